//! Running untrusted Python: a language model's candidate solution followed by its unit tests.
//!
//! # Design
//!
//! Every [`Sandbox::run_python`] call builds a throw-away container out of kernel primitives; no
//! helper binary, daemon or cgroup set-up is needed.
//!
//! ```text
//!  caller thread ──clone(NEWPID|NEWNS|NEWNET|NEWIPC|NEWUTS[|NEWUSER])──► init (PID 1, our code)
//!    poll()s stdout, stderr and a status pipe         │ private mounts, read-only root, fresh
//!    until EOF or the wall deadline, then SIGKILLs    │ /proc, tmpfs /tmp (scratch), /dev/shm, /run
//!    init: the kernel then kills the whole namespace  └──fork──► python (PID 2): rlimits, drop to
//!                                                         the sandbox uid, no_new_privs, execve
//! ```
//!
//! What isolates what:
//!
//! - **Processes.** The program runs in a new PID namespace whose init is a tiny loop of ours that
//!   reaps orphans and reports the program's wait status. When the program exits, init exits, and
//!   when a namespace's init dies the kernel SIGKILLs every process left in it, so a fork bomb or a
//!   daemonised child cannot outlive the run. The wall-clock limit is enforced by killing init
//!   (and its process group); init also arms its own `alarm` as a backstop and has
//!   `PR_SET_PDEATHSIG`, so a crashed harness leaves no orphans. RLIMIT_NPROC caps how many
//!   processes (threads included) the program may have at once.
//! - **Privileges.** RLIMIT_NPROC is ignored for root, so when the harness runs as root (CI
//!   does) the program must not: before `execve` it drops every group and switches to a
//!   sandbox uid/gid. Each run gets its own random id from an unallocated range
//!   (`0x7000_0000 + [0, 2^24)`) rather than `nobody`, because RLIMIT_NPROC counts all
//!   processes of a uid: with a shared uid one run's fork bomb would use up the process budget
//!   of every concurrent run. `PR_SET_NO_NEW_PRIVS` makes setuid binaries useless. When the
//!   harness is not root, the namespaces are created inside an unprivileged user namespace that
//!   maps only the caller's own uid and gid (so nothing runs with more rights than the caller),
//!   and since Linux 5.14 RLIMIT_NPROC is counted per user namespace there. Without a usable
//!   user namespace [`Sandbox::new`] reports [`SandboxError::Unavailable`]: it never runs code
//!   unsandboxed.
//! - **Filesystem.** The mount namespace is made recursively private (nothing propagates back to
//!   the host) and the whole mount tree is then made read-only (`mount_setattr`), so a write to
//!   any host path — the harness's directories, `/var/tmp`, a world-writable directory — fails
//!   with `EROFS`. Fresh size-limited tmpfs instances are mounted on `/tmp` (holding the scratch
//!   directory) and `/dev/shm` (Python's `multiprocessing` needs it), an empty read-only tmpfs on
//!   `/run` hides host sockets such as D-Bus, and a fresh `/proc` shows only the sandbox's
//!   processes. The scratch directory (`/tmp/skillzip-<random>`, mode 0700, owned by the sandbox
//!   uid) is the program's working directory, `HOME` and `TMPDIR`; the source is written there as
//!   `main.py`. It lives only in memory and vanishes with the mount namespace when the last
//!   process of the run dies — also on a timeout — so nothing is left on disk and the program
//!   cannot fill the disk: the tmpfs holds at most `max(4 × file_bytes, 1 MiB)` plus the source.
//! - **Network.** A new network namespace has only a loopback interface, and it is down: every
//!   connection, also to `127.0.0.1`, fails with `ENETUNREACH`. Abstract UNIX sockets are per
//!   network namespace too.
//! - **Resources.** RLIMIT_CPU (SIGXCPU at the limit, SIGKILL a second later), RLIMIT_AS,
//!   RLIMIT_FSIZE (Python ignores SIGXFSZ, so an oversized write raises `OSError(EFBIG)`),
//!   RLIMIT_CORE = 0 and RLIMIT_NOFILE = 64. These are per process: a program that forks may use
//!   up to `processes × memory_bytes` in total; a cgroup would be needed for a joint limit.
//! - **Output.** stdout and stderr are pipes read concurrently with `poll` by the calling thread,
//!   so a chatty program cannot block on a full pipe; at most `output_bytes` of each are kept and
//!   the rest is drained and dropped. stdin is `/dev/null`.
//!
//! The interpreter is started as `python -I -B main.py` with only `PATH`, `HOME`, `TMPDIR` and
//! `LANG` set: `-I` ignores `PYTHON*` variables and the user site directory, `-B` skips writing
//! bytecode (the tree is read-only anyway). `site` stays on so `exit()` and system packages work.
//! The interpreter must be executable by the sandbox uid: as root, `/root/...` (e.g. a pyenv
//! build) is not, so [`Sandbox::new`] takes the first real (ELF) `python3` — the one `python3`
//! on `PATH` resolves to, then each `PATH` entry, then `/usr/bin`, `/usr/local/bin` — whose every
//! directory is world-traversable, instead of bind-mounting a private prefix (which breaks
//! interpreters built with absolute library paths). It then runs a probe program under the
//! configured limits and checks that it runs unprivileged.
//!
//! Between `clone` and `execve` the children of a multithreaded process may only make
//! async-signal-safe calls, so everything (C strings, argument and environment arrays, maps,
//! limits) is prepared before `clone`, and the children make only single system calls (libc's
//! thin wrappers, or raw `syscall` where glibc's wrapper does more: its `setresuid` would try to
//! signal the other threads of the process we were cloned from): no allocation, no locks, no
//! panics. Setup failures in the children travel back over the status pipe as (step, errno)
//! and become [`SandboxError::Setup`].
//!
//! Not covered: the host filesystem stays *readable* wherever its permissions let "other" read
//! (the root filesystem is read-only, not hidden); memory and CPU limits are per process, not
//! per run (see above); a run costs one `clone` of the calling process's page tables, so
//! calling from a process with a very large address space makes runs slower.

use std::path::PathBuf;
use std::time::Duration;

/// Resource limits of one sandboxed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Wall-clock limit; the whole process tree is killed when it passes.
    pub wall: Duration,
    /// CPU-time limit (RLIMIT_CPU), seconds.
    pub cpu_seconds: u64,
    /// Address-space limit (RLIMIT_AS), bytes.
    pub memory_bytes: u64,
    /// Largest file the program may write (RLIMIT_FSIZE), bytes.
    pub file_bytes: u64,
    /// Most processes (RLIMIT_NPROC, for the sandbox user).
    pub processes: u64,
    /// Most bytes of stdout and of stderr kept.
    pub output_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            wall: Duration::from_secs(5),
            cpu_seconds: 4,
            memory_bytes: 512 << 20,
            file_bytes: 1 << 20,
            processes: 16,
            output_bytes: 64 << 10,
        }
    }
}

/// How a sandboxed program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it (CPU limit: SIGXCPU/SIGKILL, memory: usually a Python MemoryError exit).
    Signal(i32),
    /// The wall-clock limit passed and the sandbox killed it.
    WallTimeout,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// How it ended.
    pub exit: Exit,
    /// Standard output (at most `output_bytes`, lossy UTF-8).
    pub stdout: String,
    /// Standard error (at most `output_bytes`, lossy UTF-8).
    pub stderr: String,
    /// Wall time taken.
    pub wall: Duration,
}

impl RunOutcome {
    /// Whether the program exited with status 0.
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0)
    }
}

/// Why a program could not be run at all (its own failures are a [`RunOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The sandbox cannot work on this machine (no namespaces, no Python, …).
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
    /// An operating-system call failed while setting the run up.
    #[error("sandbox setup failed at {step}: {source}")]
    Setup {
        /// Which step failed.
        step: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The limits cannot be enforced as given (e.g. a zero wall-clock limit).
    #[error("invalid sandbox limits: {0}")]
    InvalidLimits(String),
}

/// How the sandbox gets an unprivileged identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// We are root: create the namespaces directly and switch to a per-run sandbox uid.
    Root,
    /// We are not root: an unprivileged user namespace mapping only our own uid and gid.
    UserNamespace,
}

/// A configured sandbox for Python programs.
#[derive(Debug, Clone)]
pub struct Sandbox {
    python: PathBuf,
    limits: SandboxLimits,
    mode: Mode,
}

/// Run by [`Sandbox::new`]: fails unless Python 3 runs, and runs without root.
const PROBE: &str = "import os, sys\nif sys.version_info[0] != 3: sys.exit(3)\n\
                     if os.getuid() == 0 or os.geteuid() == 0: sys.exit(4)\n";

impl Sandbox {
    /// Finds a Python 3 interpreter and checks that the sandbox can work here.
    ///
    /// Runs a small probe program under `limits`, so a limit Python cannot start under is
    /// reported here rather than on every run.
    pub fn new(limits: SandboxLimits) -> Result<Self, SandboxError> {
        if limits.wall.is_zero() {
            return Err(SandboxError::InvalidLimits(
                "the wall-clock limit is zero".into(),
            ));
        }
        let (python, mode) = imp::discover()?;
        let sandbox = Self {
            python,
            limits,
            mode,
        };
        let probe = sandbox.run_python(PROBE).map_err(|e| match e {
            SandboxError::Unavailable(_) | SandboxError::InvalidLimits(_) => e,
            SandboxError::Setup { .. } => SandboxError::Unavailable(format!(
                "{e} (mode {:?}; without root this needs unprivileged user namespaces)",
                sandbox.mode
            )),
        })?;
        if !probe.success() {
            return Err(SandboxError::Unavailable(format!(
                "probe program under {} failed with these limits: {:?}; stderr: {}",
                sandbox.python.display(),
                probe.exit,
                probe.stderr.trim()
            )));
        }
        Ok(sandbox)
    }

    /// The limits every run gets.
    pub fn limits(&self) -> SandboxLimits {
        self.limits
    }

    /// The interpreter used.
    pub fn python(&self) -> &std::path::Path {
        &self.python
    }

    /// Runs `source` as a Python program inside the sandbox.
    ///
    /// Blocks the calling thread until the program ends or the wall-clock limit passes; safe to
    /// call from many threads at once.
    pub fn run_python(&self, source: &str) -> Result<RunOutcome, SandboxError> {
        imp::run(self, source.as_bytes())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    //! Namespaces are Linux-only; elsewhere the sandbox is reported unavailable.
    use super::{RunOutcome, Sandbox, SandboxError};
    use std::path::PathBuf;

    pub(super) fn discover() -> Result<(PathBuf, super::Mode), SandboxError> {
        Err(SandboxError::Unavailable(
            "the sandbox needs Linux namespaces".into(),
        ))
    }

    pub(super) fn run(_: &Sandbox, _: &[u8]) -> Result<RunOutcome, SandboxError> {
        Err(SandboxError::Unavailable(
            "the sandbox needs Linux namespaces".into(),
        ))
    }
}

#[cfg(target_os = "linux")]
mod imp {
    //! The Linux implementation: preparation and supervision in the caller, the init and
    //! program processes in [`init_main`] and [`program_main`].

    use super::{Exit, Mode, RunOutcome, Sandbox, SandboxError};
    use libc::{c_char, c_int, c_long, c_uint, c_void};
    use std::ffi::{CStr, CString, OsStr};
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    /// RLIMIT_NOFILE of the program: plenty for tests, few enough to bound kernel memory.
    const OPEN_FILES: u64 = 64;
    /// Sandbox uids/gids (root mode) are `UID_BASE + [0, UID_SPAN)`: above the ranges
    /// distributions hand to users and containers, below 2^31 (signedness bugs).
    const UID_BASE: u32 = 0x7000_0000;
    const UID_SPAN: u32 = 1 << 24;
    /// Most files and directories in the scratch tmpfs.
    const SCRATCH_INODES: u64 = 4096;
    /// How long to keep draining output after killing a timed-out run.
    const KILL_GRACE: Duration = Duration::from_secs(2);
    /// Fallback upper bound for closing inherited descriptors without `close_range`.
    const MAX_CLOSE_FALLBACK: c_uint = 1 << 16;

    /// Status-pipe message kinds; a message is three native-endian u32: kind, step, value.
    const MSG_SETUP_FAILED: u32 = 1;
    const MSG_EXITED: u32 = 2;
    const MSG_LEN: usize = 12;

    /// Exit status of init when its alarm backstop fired.
    const INIT_ALARM: c_int = 2;

    /// `struct mount_attr` of `mount_setattr(2)`.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;

    /// `struct rlimit64` of `prlimit64(2)`, independent of the C library's `rlim_t`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Rlimit64 {
        cur: u64,
        max: u64,
    }

    /// The set-up steps the children report failures of.
    #[derive(Clone, Copy, Debug)]
    #[repr(u32)]
    enum Step {
        Fds,
        DeathSignal,
        Session,
        IdMaps,
        Propagation,
        ReadOnly,
        Proc,
        Tmp,
        Shm,
        Scratch,
        Program,
        Signals,
        Fork,
        Rlimits,
        Groups,
        Gid,
        Uid,
        NoNewPrivs,
        Chdir,
        Exec,
    }

    impl Step {
        const ALL: [Step; 20] = [
            Step::Fds,
            Step::DeathSignal,
            Step::Session,
            Step::IdMaps,
            Step::Propagation,
            Step::ReadOnly,
            Step::Proc,
            Step::Tmp,
            Step::Shm,
            Step::Scratch,
            Step::Program,
            Step::Signals,
            Step::Fork,
            Step::Rlimits,
            Step::Groups,
            Step::Gid,
            Step::Uid,
            Step::NoNewPrivs,
            Step::Chdir,
            Step::Exec,
        ];

        fn name(self) -> &'static str {
            match self {
                Step::Fds => "arranging descriptors",
                Step::DeathSignal => "setting the parent-death signal",
                Step::Session => "creating a session",
                Step::IdMaps => "writing the user namespace's id maps",
                Step::Propagation => "making mounts private",
                Step::ReadOnly => "making the mount tree read-only",
                Step::Proc => "mounting /proc",
                Step::Tmp => "mounting the scratch tmpfs on /tmp",
                Step::Shm => "mounting a tmpfs on /dev/shm",
                Step::Scratch => "creating the scratch directory",
                Step::Program => "writing the program file",
                Step::Signals => "resetting signal handlers",
                Step::Fork => "forking the program process",
                Step::Rlimits => "setting resource limits",
                Step::Groups => "dropping supplementary groups",
                Step::Gid => "switching to the sandbox gid",
                Step::Uid => "switching to the sandbox uid",
                Step::NoNewPrivs => "setting no_new_privs",
                Step::Chdir => "entering the scratch directory",
                Step::Exec => "executing the interpreter",
            }
        }
    }

    fn setup_error(step: &'static str, source: io::Error) -> SandboxError {
        SandboxError::Setup { step, source }
    }

    /// Finds the interpreter for this process's mode (cached: it cannot change).
    pub(super) fn discover() -> Result<(PathBuf, Mode), SandboxError> {
        static FOUND: OnceLock<Result<(PathBuf, Mode), String>> = OnceLock::new();
        FOUND
            .get_or_init(|| {
                // SAFETY: geteuid cannot fail.
                let mode = if unsafe { libc::geteuid() } == 0 {
                    Mode::Root
                } else {
                    Mode::UserNamespace
                };
                find_python(mode).map(|p| (p, mode))
            })
            .clone()
            .map_err(SandboxError::Unavailable)
    }

    fn find_python(mode: Mode) -> Result<PathBuf, String> {
        let mut candidates = Vec::new();
        // Where `python3` on PATH really lives (resolves pyenv-style shims).
        if let Ok(out) = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            && out.status.success()
        {
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !text.is_empty() {
                candidates.push(PathBuf::from(text));
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join("python3")));
        }
        candidates.push("/usr/bin/python3".into());
        candidates.push("/usr/local/bin/python3".into());

        let mut rejected = Vec::new();
        for candidate in candidates {
            let Ok(real) = std::fs::canonicalize(&candidate) else {
                continue;
            };
            match usable(&real, mode) {
                Ok(()) => return Ok(real),
                Err(why) => rejected.push(format!("{} ({why})", real.display())),
            }
        }
        Err(format!(
            "no Python 3 interpreter the sandbox user can execute; rejected: [{}]",
            rejected.join(", ")
        ))
    }

    /// Whether the sandbox user can execute `real` (a canonical path) as a native binary.
    fn usable(real: &Path, mode: Mode) -> Result<(), String> {
        let mut magic = [0u8; 4];
        std::fs::File::open(real)
            .and_then(|mut f| io::Read::read_exact(&mut f, &mut magic))
            .map_err(|e| format!("unreadable: {e}"))?;
        if magic != *b"\x7fELF" {
            return Err("not an ELF binary (a shim script?)".into());
        }
        match mode {
            // The sandbox uid is nobody's owner or group member: "other" bits decide.
            Mode::Root => {
                let mode_of = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode());
                if mode_of(real).map_err(|e| e.to_string())? & 0o001 == 0 {
                    return Err("not world-executable".into());
                }
                for dir in real.ancestors().skip(1) {
                    if mode_of(dir).map_err(|e| e.to_string())? & 0o001 == 0 {
                        return Err(format!("{} is not world-traversable", dir.display()));
                    }
                }
                Ok(())
            }
            // The sandbox runs as our own uid there.
            Mode::UserNamespace => {
                let c = CString::new(real.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
                // SAFETY: `c` is a valid NUL-terminated path.
                if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
                    Ok(())
                } else {
                    Err(format!("not executable: {}", io::Error::last_os_error()))
                }
            }
        }
    }

    /// A random-enough 64-bit value: `RandomState` is seeded from the OS; the counter and clock
    /// make successive values distinct.
    fn random_u64() -> u64 {
        use std::hash::BuildHasher;
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        std::hash::RandomState::new().hash_one((
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos,
            std::process::id(),
        ))
    }

    /// A sandbox uid no other run of this process uses at the same time.
    struct UidLease(u32);

    static UIDS_IN_USE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

    impl UidLease {
        fn acquire() -> Self {
            loop {
                let uid = UID_BASE + (random_u64() % u64::from(UID_SPAN)) as u32;
                let mut in_use = UIDS_IN_USE.lock().unwrap_or_else(|p| p.into_inner());
                if !in_use.contains(&uid) {
                    in_use.push(uid);
                    return Self(uid);
                }
            }
        }
    }

    impl Drop for UidLease {
        fn drop(&mut self) {
            let mut in_use = UIDS_IN_USE.lock().unwrap_or_else(|p| p.into_inner());
            in_use.retain(|&u| u != self.0);
        }
    }

    /// Everything the children need, prepared before `clone` (they must not allocate).
    struct Plan<'a> {
        mode: Mode,
        uid: u32,
        gid: u32,
        uid_map: CString,
        gid_map: CString,
        tmp_options: CString,
        shm_options: CString,
        scratch: CString,
        program: CString,
        source: &'a [u8],
        python: CString,
        /// NULL-terminated; points into `strings`.
        argv: Vec<*const c_char>,
        /// NULL-terminated; points into `strings`.
        envp: Vec<*const c_char>,
        /// Owns what `argv` and `envp` point to.
        _strings: Vec<CString>,
        /// (resource, soft, hard) for `prlimit64`.
        rlimits: [(c_long, u64, u64); 6],
        alarm_seconds: c_uint,
        /// The run's stdin, stdout, stderr and status descriptors, in that order, as seen
        /// before `clone`; init moves them to 0..=3.
        fds: [RawFd; 4],
    }

    fn cstring(bytes: impl Into<Vec<u8>>) -> Result<CString, SandboxError> {
        CString::new(bytes).map_err(|e| {
            setup_error(
                "preparing arguments",
                io::Error::new(io::ErrorKind::InvalidInput, e),
            )
        })
    }

    fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
        let mut fds = [0 as c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(setup_error("creating pipes", io::Error::last_os_error()));
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    /// Kills and reaps init if supervision ends early (it never should); marks it reaped
    /// otherwise.
    struct InitGuard {
        pid: libc::pid_t,
        reaped: bool,
    }

    impl InitGuard {
        fn kill(&self) {
            // SAFETY: plain signals to a child we have not reaped, so its pid (which is also
            // the id of the process group it leads) cannot have been reused.
            unsafe {
                libc::kill(-self.pid, libc::SIGKILL);
                libc::kill(self.pid, libc::SIGKILL);
            }
        }

        /// Waits for init; its wait status, or `None` when it cannot be waited for (e.g. the
        /// process ignores SIGCHLD, so the kernel reaped it).
        fn reap(&mut self) -> Option<c_int> {
            let mut status = 0;
            loop {
                // SAFETY: waits for our own child only.
                let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) };
                if r == self.pid {
                    self.reaped = true;
                    return Some(status);
                }
                if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    self.reaped = true;
                    return None;
                }
            }
        }
    }

    impl Drop for InitGuard {
        fn drop(&mut self) {
            if !self.reaped {
                self.kill();
                self.reap();
            }
        }
    }

    pub(super) fn run(sandbox: &Sandbox, source: &[u8]) -> Result<RunOutcome, SandboxError> {
        let start = Instant::now();
        let limits = sandbox.limits;
        if limits.wall.is_zero() {
            return Err(SandboxError::InvalidLimits(
                "the wall-clock limit is zero".into(),
            ));
        }
        // Held until init is reaped: by then every process of that uid is gone.
        let lease = (sandbox.mode == Mode::Root).then(UidLease::acquire);
        let (uid, gid) = match &lease {
            Some(lease) => (lease.0, lease.0),
            // SAFETY: getters that cannot fail.
            None => unsafe { (libc::geteuid(), libc::getegid()) },
        };

        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        // SAFETY: a constant path; the result is checked.
        let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if null < 0 {
            return Err(setup_error("opening /dev/null", io::Error::last_os_error()));
        }
        // SAFETY: just opened, owned by nobody else.
        let null = unsafe { OwnedFd::from_raw_fd(null) };
        let fds = [&null, &out_w, &err_w, &status_w].map(|fd| fd.as_raw_fd());
        let plan = Plan::new(sandbox, source, uid, gid, fds)?;

        let mut flags = libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::SIGCHLD;
        if plan.mode == Mode::UserNamespace {
            flags |= libc::CLONE_NEWUSER;
        }
        // A raw clone rather than fork(): one call gives the child new namespaces and makes it
        // PID 1 of the new PID namespace, and glibc's fork handlers (which take locks) do not
        // run.
        // SAFETY: with a null stack clone behaves like fork; the child runs only
        // async-signal-safe code on its copy of this stack and never returns (init_main: -> !).
        let pid = unsafe { libc::syscall(libc::SYS_clone, c_long::from(flags), 0, 0, 0, 0) };
        if pid == 0 {
            init_main(&plan);
        }
        if pid < 0 {
            return Err(setup_error(
                "creating namespaces (clone)",
                io::Error::last_os_error(),
            ));
        }
        let mut init = InitGuard {
            pid: pid as libc::pid_t,
            reaped: false,
        };
        // Only the children may hold the write ends, or EOF never comes.
        drop((out_w, err_w, status_w, null));

        let mut streams = Streams::new([out_r, err_r, status_r], limits.output_bytes);
        let timed_out = streams.pump(start + limits.wall, || init.kill());
        let init_status = init.reap();
        let wall = start.elapsed();
        drop(lease);

        let exit = decode(&streams.status, timed_out, init_status)?;
        Ok(RunOutcome {
            exit,
            stdout: String::from_utf8_lossy(&streams.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&streams.stderr).into_owned(),
            wall,
        })
    }

    impl<'a> Plan<'a> {
        /// Prepares a run of `source`; `fds` are the run's stdin, stdout, stderr and status.
        fn new(
            sandbox: &Sandbox,
            source: &'a [u8],
            uid: u32,
            gid: u32,
            fds: [RawFd; 4],
        ) -> Result<Self, SandboxError> {
            let limits = sandbox.limits;
            let scratch = format!("/tmp/skillzip-{:016x}", random_u64());
            let scratch_bytes = limits
                .file_bytes
                .saturating_mul(4)
                .max(1 << 20)
                .saturating_add(source.len() as u64);
            let shm_bytes = limits.file_bytes.max(1 << 20);

            let mut strings = Vec::new();
            let mut argv = Vec::new();
            for arg in [
                sandbox.python.as_os_str(),
                OsStr::new("-I"),
                OsStr::new("-B"),
                OsStr::new("main.py"),
            ] {
                let c = cstring(arg.as_bytes())?;
                argv.push(c.as_ptr()); // the heap buffer stays put when `c` moves
                strings.push(c);
            }
            argv.push(std::ptr::null());
            let mut envp = Vec::new();
            for var in [
                "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
                format!("HOME={scratch}"),
                format!("TMPDIR={scratch}"),
                "LANG=C.UTF-8".to_owned(),
            ] {
                let c = cstring(var)?;
                envp.push(c.as_ptr());
                strings.push(c);
            }
            envp.push(std::ptr::null());

            let cpu = limits.cpu_seconds.max(1); // RLIMIT_CPU 0 would mean "no limit"
            let processes = limits.processes.max(1); // 0 would make the execve itself fail
            let both = |resource, value| (resource as c_long, value, value);
            Ok(Self {
                mode: sandbox.mode,
                uid,
                gid,
                uid_map: cstring(format!("{uid} {uid} 1\n"))?,
                gid_map: cstring(format!("{gid} {gid} 1\n"))?,
                tmp_options: cstring(format!(
                    "size={scratch_bytes},nr_inodes={SCRATCH_INODES},mode=1777"
                ))?,
                shm_options: cstring(format!(
                    "size={shm_bytes},nr_inodes={SCRATCH_INODES},mode=1777"
                ))?,
                program: cstring(format!("{scratch}/main.py"))?,
                scratch: cstring(scratch)?,
                source,
                python: cstring(sandbox.python.as_os_str().as_bytes())?,
                argv,
                envp,
                _strings: strings,
                rlimits: [
                    both(libc::RLIMIT_CORE, 0),
                    // SIGXCPU at the soft limit, SIGKILL a second later.
                    (libc::RLIMIT_CPU as c_long, cpu, cpu.saturating_add(1)),
                    both(libc::RLIMIT_AS, limits.memory_bytes),
                    both(libc::RLIMIT_FSIZE, limits.file_bytes),
                    both(libc::RLIMIT_NOFILE, OPEN_FILES),
                    both(libc::RLIMIT_NPROC, processes),
                ],
                alarm_seconds: c_uint::try_from(limits.wall.as_secs().saturating_add(2))
                    .unwrap_or(c_uint::MAX),
                fds,
            })
        }
    }

    /// The run's exit from the status-pipe messages, or the setup failure they report.
    fn decode(
        status: &[u8],
        timed_out: bool,
        init_status: Option<c_int>,
    ) -> Result<Exit, SandboxError> {
        let mut exited = None;
        for msg in status.chunks_exact(MSG_LEN) {
            let word = |i: usize| {
                let mut b = [0u8; 4];
                b.copy_from_slice(&msg[i * 4..i * 4 + 4]);
                u32::from_ne_bytes(b)
            };
            match word(0) {
                MSG_SETUP_FAILED => {
                    let step = Step::ALL
                        .get(word(1) as usize)
                        .map_or("an unknown step", |s| s.name());
                    let errno = word(2) as i32;
                    return Err(setup_error(step, io::Error::from_raw_os_error(errno)));
                }
                MSG_EXITED if exited.is_none() => exited = Some(word(2) as c_int),
                _ => {}
            }
        }
        let alarm =
            init_status.is_some_and(|s| libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == INIT_ALARM);
        match exited {
            Some(s) if libc::WIFEXITED(s) => Ok(Exit::Code(libc::WEXITSTATUS(s))),
            Some(s) if libc::WIFSIGNALED(s) => Ok(Exit::Signal(libc::WTERMSIG(s))),
            Some(s) => Err(setup_error(
                "waiting for the program",
                io::Error::other(format!("unexpected wait status {s:#x}")),
            )),
            None if timed_out || alarm => Ok(Exit::WallTimeout),
            None => Err(setup_error(
                "supervising the run",
                io::Error::other(format!(
                    "the sandbox's init ended without reporting (wait status {init_status:?})"
                )),
            )),
        }
    }

    /// The read ends of stdout, stderr and the status pipe, and what came out of them.
    struct Streams {
        fds: [Option<OwnedFd>; 3],
        limit: usize,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        status: Vec<u8>,
    }

    impl Streams {
        fn new(fds: [OwnedFd; 3], limit: usize) -> Self {
            let [a, b, c] = fds;
            Self {
                fds: [Some(a), Some(b), Some(c)],
                limit,
                stdout: Vec::new(),
                stderr: Vec::new(),
                status: Vec::new(),
            }
        }

        /// Reads until every writer is gone. At `deadline` calls `kill` once and then drains
        /// for at most [`KILL_GRACE`]. Returns whether the deadline passed first.
        fn pump(&mut self, deadline: Instant, kill: impl Fn()) -> bool {
            let mut buf = vec![0u8; 64 << 10];
            let mut killed_at: Option<Instant> = None;
            while self.fds.iter().any(Option::is_some) {
                let now = Instant::now();
                let until = killed_at.map_or(deadline, |k| k + KILL_GRACE);
                if now >= until {
                    if killed_at.is_some() {
                        break; // something outside the namespace holds a pipe; give up on it
                    }
                    kill();
                    killed_at = Some(now);
                    continue;
                }
                let wait_ms = (until - now).as_millis().saturating_add(1);
                let mut polls = self.fds.each_ref().map(|fd| libc::pollfd {
                    fd: fd.as_ref().map_or(-1, |f| f.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                });
                // SAFETY: `polls` is a valid array of pollfd; negative fds are ignored.
                let ready = unsafe {
                    libc::poll(
                        polls.as_mut_ptr(),
                        polls.len() as libc::nfds_t,
                        c_int::try_from(wait_ms).unwrap_or(c_int::MAX),
                    )
                };
                if ready <= 0 {
                    continue; // timeout or EINTR: the loop head re-checks the clock
                }
                for (i, p) in polls.iter().enumerate() {
                    if p.revents == 0 || p.fd < 0 {
                        continue;
                    }
                    // SAFETY: reads into our buffer from a descriptor we own.
                    let n =
                        unsafe { libc::read(p.fd, buf.as_mut_ptr().cast::<c_void>(), buf.len()) };
                    if n > 0 {
                        let data = &buf[..n as usize];
                        let (sink, cap) = match i {
                            0 => (&mut self.stdout, self.limit),
                            1 => (&mut self.stderr, self.limit),
                            _ => (&mut self.status, 1 << 12),
                        };
                        let room = cap.saturating_sub(sink.len());
                        sink.extend_from_slice(&data[..data.len().min(room)]);
                    } else if n == 0
                        || !matches!(
                            io::Error::last_os_error().raw_os_error(),
                            Some(libc::EINTR | libc::EAGAIN)
                        )
                    {
                        self.fds[i] = None; // EOF (or a broken pipe): stop polling it
                    }
                }
            }
            killed_at.is_some()
        }
    }

    // ---- Children. Everything below runs between clone and execve: async-signal-safe raw
    // ---- calls only, no allocation, no panics.

    /// Sends a (kind, step, value) message on `fd`.
    fn send(fd: c_int, kind: u32, step: u32, value: u32) {
        let mut msg = [0u8; MSG_LEN];
        for (chunk, word) in msg.chunks_exact_mut(4).zip([kind, step, value]) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        // SAFETY: writes a local buffer; short writes cannot happen below PIPE_BUF.
        unsafe { libc::write(fd, msg.as_ptr().cast::<c_void>(), MSG_LEN) };
    }

    /// Reports `step` failing with the current errno and exits.
    fn fail(fd: c_int, step: Step) -> ! {
        fail_with(fd, step, errno())
    }

    /// Reports `step` failing with `errno` and exits.
    fn fail_with(fd: c_int, step: Step, errno: c_int) -> ! {
        send(fd, MSG_SETUP_FAILED, step as u32, errno as u32);
        // SAFETY: _exit is async-signal-safe and skips atexit handlers.
        unsafe { libc::_exit(127) }
    }

    extern "C" fn on_alarm(_: c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(INIT_ALARM) }
    }

    /// Writes all of `data` to `fd`.
    fn write_all(fd: c_int, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            // SAFETY: writes from a valid slice.
            let n = unsafe { libc::write(fd, data.as_ptr().cast::<c_void>(), data.len()) };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return false;
            }
            data = data.get(n as usize..).unwrap_or(&[]);
        }
        true
    }

    /// Opens `path` for writing and writes `data` (id maps, the program file).
    fn write_file(path: &CStr, flags: c_int, mode: libc::mode_t, data: &[u8]) -> bool {
        // SAFETY: valid path; the descriptor is closed before returning.
        unsafe {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC | flags,
                mode,
            );
            if fd < 0 {
                return false;
            }
            let ok = write_all(fd, data);
            libc::close(fd) == 0 && ok
        }
    }

    fn mount(src: &CStr, target: &CStr, fstype: &CStr, flags: libc::c_ulong, data: &CStr) -> bool {
        // SAFETY: valid NUL-terminated strings.
        unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data.as_ptr().cast::<c_void>(),
            ) == 0
        }
    }

    fn errno() -> c_int {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// PID 1 of the run's namespaces: sets up the mount namespace, forks the program, reaps
    /// everything and reports the program's wait status.
    fn init_main(plan: &Plan) -> ! {
        // SAFETY: raw system calls on data prepared before clone and valid in this copy of the
        // process; see the module docs for why only such calls are made here.
        unsafe {
            let mut report = plan.fds[3];

            // Default dispositions and an empty mask: the harness's handlers, ignored SIGCHLD
            // or blocked signals must not leak into init or (through execve) the program.
            for sig in 1..=64 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                fail(report, Step::Signals);
            }

            // Move stdin/out/err/status to 0..=3 (via high copies, so no order clobbers one)
            // and close everything else: other threads' descriptors, and the pipes of
            // concurrent runs, which would otherwise keep their EOF from coming.
            let mut high = [0 as c_int; 4];
            for (slot, &fd) in high.iter_mut().zip(plan.fds.iter()) {
                *slot = libc::fcntl(fd, libc::F_DUPFD, 10);
                if *slot < 0 {
                    fail(report, Step::Fds);
                }
            }
            for (target, &fd) in (0..).zip(high.iter()) {
                if libc::dup2(fd, target) < 0 {
                    fail(report, Step::Fds);
                }
            }
            report = 3;
            if libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) != 0 {
                fail(report, Step::Fds);
            }
            if libc::syscall(libc::SYS_close_range, 4 as c_uint, c_uint::MAX, 0 as c_uint) != 0 {
                for fd in 4..MAX_CLOSE_FALLBACK as c_int {
                    libc::close(fd);
                }
            }

            // If the harness dies, so does init, and with it the namespace.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                fail(report, Step::DeathSignal);
            }
            // Own session and process group: no controlling terminal, and the group can be
            // killed as a whole.
            if libc::setsid() < 0 {
                fail(report, Step::Session);
            }

            if plan.mode == Mode::UserNamespace
                && !(write_file(c"/proc/self/setgroups", 0, 0, b"deny")
                    && write_file(c"/proc/self/uid_map", 0, 0, plan.uid_map.as_bytes())
                    && write_file(c"/proc/self/gid_map", 0, 0, plan.gid_map.as_bytes()))
            {
                fail(report, Step::IdMaps);
            }

            // Nothing mounted here may propagate to the host, and nothing the host mounts
            // later reaches in.
            if !mount(c"none", c"/", c"", libc::MS_REC | libc::MS_PRIVATE, c"") {
                fail(report, Step::Propagation);
            }
            let attr = MountAttr {
                attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            let r = libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD as c_long,
                c"/".as_ptr(),
                libc::AT_RECURSIVE as c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            );
            if r != 0 {
                // Before Linux 5.12: at least the root filesystem (world-writable places on
                // other mounts are covered by the tmpfs mounts below).
                let e = errno();
                if !(e == libc::ENOSYS
                    && plan.mode == Mode::Root
                    && mount(
                        c"none",
                        c"/",
                        c"",
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                        c"",
                    ))
                {
                    fail_with(report, Step::ReadOnly, e);
                }
            }

            // A /proc of this PID namespace: the program sees only its own processes. An
            // unprivileged user namespace may not be allowed to mount one (e.g. when the host's
            // /proc is partly masked); the host /proc then stays, read-only.
            let hidden = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if !mount(c"proc", c"/proc", c"proc", hidden, c"") && plan.mode == Mode::Root {
                fail(report, Step::Proc);
            }
            let writable = libc::MS_NOSUID | libc::MS_NODEV;
            if !mount(c"tmpfs", c"/tmp", c"tmpfs", writable, &plan.tmp_options) {
                fail(report, Step::Tmp);
            }
            if !mount(c"tmpfs", c"/dev/shm", c"tmpfs", writable, &plan.shm_options) {
                fail(report, Step::Shm);
            }
            // Hides host sockets (D-Bus, journald); /run may not exist, so best effort.
            mount(
                c"tmpfs",
                c"/run",
                c"tmpfs",
                hidden | libc::MS_RDONLY,
                c"size=4k,mode=755",
            );

            if libc::mkdir(plan.scratch.as_ptr(), 0o700) != 0
                || libc::chown(plan.scratch.as_ptr(), plan.uid, plan.gid) != 0
            {
                fail(report, Step::Scratch);
            }
            if !write_file(
                &plan.program,
                libc::O_CREAT | libc::O_EXCL,
                0o600,
                plan.source,
            ) || libc::chown(plan.program.as_ptr(), plan.uid, plan.gid) != 0
            {
                fail(report, Step::Program);
            }

            // Backstop for the wall limit should the harness be gone before PDEATHSIG was set.
            // An init ignores signals it has no handler for, so it needs one.
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_alarm as extern "C" fn(c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()) != 0 {
                fail(report, Step::Signals);
            }
            libc::alarm(plan.alarm_seconds);
            // Not dumpable, so a program of the same uid (user namespace mode) cannot ptrace
            // init. Only now: it makes /proc/self root-owned, which the id maps above need.
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);

            // SAFETY: as for the first clone; the child never returns.
            let child = libc::syscall(libc::SYS_clone, libc::SIGCHLD as c_long, 0, 0, 0, 0);
            if child == 0 {
                program_main(plan);
            }
            if child < 0 {
                fail(report, Step::Fork);
            }
            // Init keeps only the status pipe, so EOF on stdout/stderr means the program's
            // processes are gone.
            libc::close(0);
            libc::close(1);
            libc::close(2);
            loop {
                let mut status = 0;
                let r = libc::waitpid(-1, &mut status, libc::__WALL);
                if r == child as libc::pid_t {
                    send(report, MSG_EXITED, 0, status as u32);
                    // Exiting kills whatever the program left behind in the namespace.
                    libc::_exit(0);
                }
                if r < 0 && errno() != libc::EINTR {
                    libc::_exit(1);
                }
            }
        }
    }

    /// The program process: limits, unprivileged identity, then the interpreter.
    fn program_main(plan: &Plan) -> ! {
        // SAFETY: raw system calls on data prepared before clone and valid in this copy of the
        // process; see the module docs for why only such calls are made here.
        unsafe {
            let report = 3;
            for &(resource, cur, max) in &plan.rlimits {
                let lim = Rlimit64 { cur, max };
                let r = libc::syscall(
                    libc::SYS_prlimit64,
                    0 as c_long,
                    resource,
                    &lim as *const Rlimit64,
                    std::ptr::null_mut::<Rlimit64>(),
                );
                if r != 0 {
                    fail(report, Step::Rlimits);
                }
            }
            // Raw syscalls: glibc's wrappers would broadcast the change to the threads of the
            // process we were cloned from, which do not exist here.
            if plan.mode == Mode::Root {
                if libc::syscall(
                    libc::SYS_setgroups,
                    0 as c_long,
                    std::ptr::null::<libc::gid_t>(),
                ) != 0
                {
                    fail(report, Step::Groups);
                }
                let (u, g) = (c_long::from(plan.uid), c_long::from(plan.gid));
                if libc::syscall(libc::SYS_setresgid, g, g, g) != 0 {
                    fail(report, Step::Gid);
                }
                // Leaving uid 0 clears every capability (no keep-caps).
                if libc::syscall(libc::SYS_setresuid, u, u, u) != 0 {
                    fail(report, Step::Uid);
                }
            }
            // In a user namespace the capabilities held until now are dropped by execve, as
            // the mapped uid is not 0.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                fail(report, Step::NoNewPrivs);
            }
            if libc::chdir(plan.scratch.as_ptr()) != 0 {
                fail(report, Step::Chdir);
            }
            libc::execve(plan.python.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            fail(report, Step::Exec);
        }
    }
}
