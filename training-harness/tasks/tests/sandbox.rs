//! The sandbox really contains what it runs: every test checks the effect on the real machine,
//! not only that a run returned.

use skillzip_tasks::{Exit, RunOutcome, Sandbox, SandboxError, SandboxLimits};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

/// Small limits so the whole file stays fast.
fn limits() -> SandboxLimits {
    SandboxLimits {
        wall: Duration::from_secs(3),
        cpu_seconds: 2,
        memory_bytes: 256 << 20,
        file_bytes: 1 << 20,
        processes: 16,
        output_bytes: 64 << 10,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The sandbox, or `None` (after saying so) where this machine cannot provide one. Root can
/// always create namespaces, so there a missing sandbox is a failure, not a skip.
fn sandbox(limits: SandboxLimits) -> Option<Sandbox> {
    match Sandbox::new(limits) {
        Ok(s) => Some(s),
        Err(SandboxError::Unavailable(reason)) => {
            assert!(
                !is_root(),
                "running as root, the sandbox must be available: {reason}"
            );
            println!("skipped: sandbox unavailable: {reason}");
            None
        }
        Err(e) => panic!("Sandbox::new failed: {e}"),
    }
}

fn run(sb: &Sandbox, source: &str) -> RunOutcome {
    sb.run_python(source)
        .expect("the sandbox could not run the program")
}

/// Pids of live processes owned by `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    processes_where(|dir| {
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let owner = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse::<u32>()
            .ok()?;
        Some(owner == uid)
    })
}

/// Pids of live processes (not zombies: they have no environment left) whose environment holds
/// `var`, e.g. one run's unique `HOME=`.
fn processes_with_env(var: &str) -> Vec<u32> {
    processes_where(|dir| {
        let environ = std::fs::read(dir.join("environ")).ok()?;
        Some(environ.split(|&b| b == 0).any(|v| v == var.as_bytes()))
    })
}

fn processes_where(matches: impl Fn(&Path) -> Option<bool>) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if matches(&entry.path()) == Some(true) {
            pids.push(pid);
        }
    }
    pids
}

/// The value printed after `key=` on a line of `stdout`.
fn field<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn machine_can_fork() {
    let status = std::process::Command::new("true")
        .status()
        .expect("fork/exec of `true` failed");
    assert!(status.success());
}

#[test]
fn normal_program_succeeds_with_captured_output_and_a_clean_environment() {
    let Some(sb) = sandbox(limits()) else { return };
    let out = run(
        &sb,
        r#"
import os, sys
print("hello from the sandbox")
print("warning", file=sys.stderr)
print("uid=%d" % os.getuid())
print("cwd=" + os.getcwd())
print("home=" + os.environ.get("HOME", ""))
print("tmpdir=" + os.environ.get("TMPDIR", ""))
print("env=" + ",".join(sorted(os.environ)))
print("pids=%d" % sum(name.isdigit() for name in os.listdir("/proc")))
try:
    os.setuid(0)
    print("root=regained")
except OSError:
    print("root=refused")
"#,
    );
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.starts_with("hello from the sandbox\n"),
        "{}",
        out.stdout
    );
    assert_eq!(out.stderr, "warning\n");
    let cwd = field(&out.stdout, "cwd").unwrap();
    assert!(cwd.starts_with("/tmp/skillzip-"), "{cwd}");
    assert_eq!(field(&out.stdout, "home"), Some(cwd));
    assert_eq!(field(&out.stdout, "tmpdir"), Some(cwd));
    assert_eq!(field(&out.stdout, "env"), Some("HOME,LANG,PATH,TMPDIR"));
    // A fresh PID namespace: init and the program, nothing of the host.
    assert_eq!(field(&out.stdout, "pids"), Some("2"));
    assert_eq!(field(&out.stdout, "root"), Some("refused"));
    if is_root() {
        assert_ne!(field(&out.stdout, "uid"), Some("0"));
    }
    assert!(out.wall < Duration::from_secs(3));
}

#[test]
fn exception_gives_nonzero_exit_and_traceback() {
    let Some(sb) = sandbox(limits()) else { return };
    let out = run(&sb, "def f():\n    raise ValueError('boom')\nf()\n");
    assert_eq!(out.exit, Exit::Code(1));
    assert!(
        out.stderr.contains("Traceback (most recent call last)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("ValueError: boom"), "{}", out.stderr);
}

#[test]
fn exit_code_propagates() {
    let Some(sb) = sandbox(limits()) else { return };
    assert_eq!(run(&sb, "import sys\nsys.exit(3)\n").exit, Exit::Code(3));
    assert_eq!(run(&sb, "exit(0)\n").exit, Exit::Code(0));
    let out = run(
        &sb,
        "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
    );
    assert_eq!(out.exit, Exit::Signal(libc::SIGTERM));
}

#[test]
fn fork_bombs_are_contained() {
    let lim = SandboxLimits {
        wall: Duration::from_secs(2),
        cpu_seconds: 1,
        ..limits()
    };
    let Some(sb) = sandbox(lim) else { return };
    let bombs = [
        // The classic: every process forks forever.
        "import os\nwhile True:\n  try: os.fork()\n  except OSError: pass\n",
        // Children leave the session and the parent exits at once: nothing may survive it.
        "import os, time\nfor _ in range(50):\n  try:\n    if os.fork() == 0:\n      os.setsid()\n      \
         time.sleep(100)\n  except OSError: pass\n",
        // Forks that each start more sleeping forks, while the first process waits.
        "import os, time\ndef grow():\n  for _ in range(8):\n    try:\n      if os.fork() == 0:\n        \
         grow(); time.sleep(100)\n    except OSError: pass\ngrow()\ntime.sleep(100)\n",
    ];
    for bomb in bombs {
        let source = format!(
            "import os\nprint('uid=%d' % os.getuid())\n\
             print('home=' + os.environ['HOME'], flush=True)\n{bomb}"
        );
        let t = Instant::now();
        let out = run(&sb, &source);
        let took = t.elapsed();
        assert!(
            took < lim.wall + Duration::from_millis(1500),
            "took {took:?}: {out:?}"
        );
        // Every process of the run, also one that changed its session or uid, carries its
        // unique HOME.
        let home = format!("HOME={}", field(&out.stdout, "home").unwrap());
        assert_eq!(
            processes_with_env(&home),
            Vec::<u32>::new(),
            "processes of the run remain"
        );
        if is_root() {
            let uid: u32 = field(&out.stdout, "uid").unwrap().parse().unwrap();
            assert_ne!(uid, 0);
            assert_eq!(
                processes_of(uid),
                Vec::<u32>::new(),
                "processes of the sandbox uid remain"
            );
        }
        machine_can_fork();
    }
}

#[test]
fn process_limit_applies() {
    let Some(sb) = sandbox(SandboxLimits {
        processes: 6,
        ..limits()
    }) else {
        return;
    };
    // Children sleep, so every successful fork holds one process slot until the end.
    let out = run(
        &sb,
        "import os, time\nn = 0\nfor _ in range(40):\n  try:\n    if os.fork() == 0:\n      \
         time.sleep(100)\n    n += 1\n  except OSError: pass\nprint('forked=%d' % n)\n",
    );
    assert!(out.success(), "{out:?}");
    let forked: u64 = field(&out.stdout, "forked").unwrap().parse().unwrap();
    assert!(
        (1..6).contains(&forked),
        "forked {forked} children under a limit of 6 processes"
    );
}

#[test]
fn busy_loop_is_killed_by_the_cpu_limit() {
    let lim = SandboxLimits {
        wall: Duration::from_secs(3),
        cpu_seconds: 1,
        ..limits()
    };
    let Some(sb) = sandbox(lim) else { return };
    let out = run(&sb, "while True: pass\n");
    assert!(
        matches!(
            out.exit,
            Exit::Signal(libc::SIGXCPU | libc::SIGKILL) | Exit::WallTimeout
        ),
        "{out:?}"
    );
    assert!(out.wall < lim.wall + Duration::from_secs(1), "{out:?}");
}

#[test]
fn sleeping_program_hits_the_wall_timeout() {
    let lim = SandboxLimits {
        wall: Duration::from_secs(1),
        ..limits()
    };
    let Some(sb) = sandbox(lim) else { return };
    let out = run(
        &sb,
        "import time\nprint('started', flush=True)\ntime.sleep(100)\n",
    );
    assert_eq!(out.exit, Exit::WallTimeout);
    assert_eq!(out.stdout, "started\n", "output before the kill is kept");
    assert!(out.wall >= lim.wall, "{:?}", out.wall);
    assert!(
        out.wall < lim.wall + Duration::from_millis(1500),
        "{:?}",
        out.wall
    );
}

#[test]
fn huge_allocations_fail() {
    let Some(sb) = sandbox(limits()) else { return };
    for program in [
        "x = bytearray(8 << 30)\n",
        "x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n",
    ] {
        let out = run(&sb, program);
        assert!(!out.success(), "{out:?}");
        assert!(
            out.stderr.contains("MemoryError") || matches!(out.exit, Exit::Signal(_)),
            "{out:?}"
        );
        assert!(out.wall < Duration::from_secs(3), "{out:?}");
    }
    machine_can_fork();
}

#[test]
fn writes_outside_the_scratch_directory_do_not_reach_the_host() {
    let Some(sb) = sandbox(limits()) else { return };
    // A directory in /tmp (the test's own tempdir) and one on the root filesystem that
    // anybody may write to, so only the sandbox stops the write.
    let in_tmp = tempfile::tempdir().unwrap();
    let on_root_fs = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for dir in [in_tmp.path(), on_root_fs.path()] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    let unique = format!(
        "skillzip-escape-{}-{:?}",
        std::process::id(),
        Instant::now()
    );
    let unique = unique.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "");
    let targets = [
        in_tmp.path().join("escaped"),
        on_root_fs.path().join("escaped"),
        Path::new("/tmp").join(&unique),
        Path::new("/var/tmp").join(&unique),
        Path::new("/dev/shm").join(&unique),
    ];
    let list = targets
        .iter()
        .map(|t| format!("{:?}", t.to_str().unwrap()))
        .collect::<Vec<_>>();
    let source = format!(
        r#"
import os
print("cwd=" + os.getcwd())
for path in [{targets}, os.path.join(os.path.dirname(os.getcwd()), "{unique}-parent")]:
    try:
        with open(path, "w") as f:
            f.write("x")
        print("wrote " + path)
    except OSError as e:
        print("refused %s: %s" % (path, e))
with open("inside.txt", "w") as f:
    f.write("kept inside")
with open(os.path.join(os.getcwd(), "inside.txt")) as f:
    print("inside=" + f.read())
"#,
        targets = list.join(", "),
    );
    let out = run(&sb, &source);
    assert!(out.success(), "{out:?}");
    assert_eq!(
        field(&out.stdout, "inside"),
        Some("kept inside"),
        "{}",
        out.stdout
    );
    for target in &targets {
        assert!(
            !target.exists(),
            "{} reached the host filesystem",
            target.display()
        );
    }
    // The scratch directory (and so its parent's view) existed only inside the sandbox.
    let cwd = Path::new(field(&out.stdout, "cwd").unwrap());
    assert!(
        !cwd.exists(),
        "scratch directory {} left behind",
        cwd.display()
    );
    let parent_write = Path::new("/tmp").join(format!("{unique}-parent"));
    assert!(!parent_write.exists());
    // The write on the root filesystem was refused, not just redirected.
    let escaped = on_root_fs.path().join("escaped");
    assert!(
        out.stdout
            .contains(&format!("refused {}", escaped.display())),
        "{}",
        out.stdout
    );
}

#[test]
fn file_size_and_scratch_space_are_limited() {
    let Some(sb) = sandbox(limits()) else { return };
    let out = run(
        &sb,
        "import errno, sys\ntry:\n    with open('big', 'wb') as f:\n        f.write(b'x' * (2 << 20))\n\
         except OSError as e:\n    print('errno=%d' % e.errno)\n    sys.exit(7)\n",
    );
    assert!(
        matches!(out.exit, Exit::Code(7) | Exit::Signal(libc::SIGXFSZ)),
        "{out:?}"
    );
    if out.exit == Exit::Code(7) {
        assert_eq!(
            field(&out.stdout, "errno"),
            Some(libc::EFBIG.to_string().as_str())
        );
    }
    // Many files each under the size limit run into the scratch quota instead of the disk.
    let out = run(
        &sb,
        "import sys\nfor i in range(64):\n    try:\n        with open('f%d' % i, 'wb') as f:\n            \
         f.write(b'x' * ((1 << 20) - 1))\n    except OSError as e:\n        print('stopped=%d errno=%d' % \
         (i, e.errno))\n        sys.exit(8)\n",
    );
    assert_eq!(out.exit, Exit::Code(8), "{out:?}");
    assert!(
        out.stdout.contains(&format!("errno={}", libc::ENOSPC)),
        "{}",
        out.stdout
    );
}

#[test]
fn network_is_unreachable() {
    let Some(sb) = sandbox(limits()) else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = run(
        &sb,
        &format!(
            r#"
import socket
for host, port in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
    try:
        socket.create_connection((host, port), timeout=1).close()
        print("connected %s" % host)
    except OSError as e:
        print("blocked %s: %s" % (host, e))
"#
        ),
    );
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.matches("blocked ").count(), 3, "{}", out.stdout);
    assert!(!out.stdout.contains("connected"), "{}", out.stdout);
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the listener saw a connection from the sandbox: {other:?}"),
    }
}

#[test]
fn output_is_bounded_and_does_not_hang() {
    let lim = SandboxLimits {
        output_bytes: 4096,
        ..limits()
    };
    let Some(sb) = sandbox(lim) else { return };
    let out = run(
        &sb,
        "import sys\nchunk = 'y' * 1023 + '\\n'\nfor _ in range(10 * 1024):\n    sys.stdout.write(chunk)\n    \
         sys.stderr.write(chunk)\n",
    );
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.len(), 4096);
    assert_eq!(out.stderr.len(), 4096);
    assert!(out.stdout.bytes().all(|b| b == b'y' || b == b'\n'));
    assert!(out.wall < Duration::from_secs(3), "{:?}", out.wall);
}

#[test]
fn concurrent_runs_are_independent() {
    let Some(sb) = sandbox(limits()) else { return };
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..4)
                .map(|t| {
                    let sb = &sb;
                    scope.spawn(move || {
                    for k in 0..2 {
                        let i = t * 2 + k;
                        let out = run(
                            sb,
                            &format!(
                                "import os, sys\nprint({i} * {i})\nprint('cwd=' + os.getcwd())\n\
                                 sys.exit({i} % 3)\n"
                            ),
                        );
                        assert_eq!(out.exit, Exit::Code(i % 3), "{out:?}");
                        assert_eq!(out.stdout.lines().next(), Some((i * i).to_string().as_str()));
                    }
                })
                })
                .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

#[test]
fn zero_wall_limit_is_rejected() {
    let lim = SandboxLimits {
        wall: Duration::ZERO,
        ..limits()
    };
    assert!(matches!(
        Sandbox::new(lim),
        Err(SandboxError::InvalidLimits(_))
    ));
}
