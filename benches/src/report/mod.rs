//! The benchmark report: the fidelity, kernel and serving studies run in one command, each
//! writing CSVs, figures (SVG and PNG) and a markdown section stating the machine, the date and
//! the command; [`check`] verifies a report directory (every CSV parses, every figure file is
//! a real SVG or PNG) and is what CI runs after the `--quick` report.
//!
//! - [`fidelity`]: the layer study on the synthetic paper-shaped case
//!   ([`skillzip_core::study`]) and, given a `skillzip weave` run, the model-level ablation
//!   table on its real skill deltas (held-out accuracy, relative output error, KL divergence).
//! - [`kernels`]: CPU kernel time against batch size, against an f32 dense GEMM of the same
//!   layer and the read floor of the skillpack's bytes.
//! - [`serving`]: `serve-min` sharing one backbone against separate full models, latency CDFs.

pub mod fidelity;
pub mod kernels;
pub mod plot;
pub mod serving;
pub mod table;

use std::path::{Path, PathBuf};

/// What can go wrong while making or checking a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An input (a run directory, a bundle, a checkpoint) is missing or malformed.
    #[error("{0}")]
    Input(String),
    /// A study failed while running.
    #[error("{study}: {message}")]
    Study {
        /// The study.
        study: &'static str,
        /// What failed.
        message: String,
    },
    /// A report file could not be written.
    #[error("writing {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A figure could not be drawn.
    #[error("figure {figure}: {message}")]
    Plot {
        /// The figure's file stem.
        figure: String,
        /// What failed.
        message: String,
    },
    /// A report directory failed its check.
    #[error("check of {dir}: {message}")]
    Check {
        /// The report directory.
        dir: PathBuf,
        /// The first problem found.
        message: String,
    },
}

/// Result of the report's functions.
pub type Result<T> = std::result::Result<T, ReportError>;

/// How long the studies run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Small cases and few repetitions: minutes on two cores, what CI runs.
    Quick,
    /// The paper's shapes and the full serving grid: about an hour on two cores.
    Full,
}

impl Preset {
    /// `quick` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quick => "quick",
            Self::Full => "full",
        }
    }
}

/// Where and how a report was made; every figure and section states it.
#[derive(Debug, Clone)]
pub struct Context {
    /// The preset.
    pub preset: Preset,
    /// The machine, in words (CPU model, cores, memory).
    pub machine: String,
    /// The date (UTC, `YYYY-MM-DD`).
    pub date: String,
    /// The command line that made the report.
    pub command: String,
    /// The report directory.
    pub out: PathBuf,
}

impl Context {
    /// The machine, date and command in one line, for figure footers.
    pub fn footer(&self) -> String {
        format!("{} · {} · {}", self.date, self.machine, self.command)
    }

    /// Path of a file of the report directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }
}

/// One study's output: its markdown section (the files it writes are
/// [`expected_files`]).
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// Markdown, starting with a `###` heading.
    pub markdown: String,
}

/// The files each study must produce; [`check`] requires them for every study listed in the
/// report's manifest.
pub fn expected_files(study: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    Some(match study {
        fidelity::SYNTHETIC => (&["fidelity_synthetic.csv"], &["pareto_synthetic"]),
        fidelity::REAL => (
            &["fidelity_real.csv", "fidelity_real_skills.csv"],
            &["pareto_real_error", "pareto_real_accuracy"],
        ),
        kernels::STUDY => (&["kernels.csv"], &["kernel_time"]),
        serving::STUDY => (
            &["serving_summary.csv", "serving_requests.csv"],
            &["serving_latency_cdf"],
        ),
        _ => return None,
    })
}

/// The manifest a report directory carries: which studies ran, in which preset.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// `quick` or `full`.
    pub preset: String,
    /// The date.
    pub date: String,
    /// The machine.
    pub machine: String,
    /// The command.
    pub command: String,
    /// Studies that ran, by name ([`expected_files`]).
    pub studies: Vec<String>,
}

/// The name of the manifest file in a report directory.
pub const MANIFEST: &str = "manifest.json";
/// The name of the combined markdown file in a report directory.
pub const MARKDOWN: &str = "report.md";

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    skillzip_format::write_atomic_bytes(path, bytes)
        .map(|_| ())
        .map_err(|e| ReportError::Write {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Reads a file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the manifest and the combined markdown of `sections` into the report directory.
pub fn finish(ctx: &Context, studies: &[(&str, Section)]) -> Result<String> {
    let manifest = Manifest {
        preset: ctx.preset.name().into(),
        date: ctx.date.clone(),
        machine: ctx.machine.clone(),
        command: ctx.command.clone(),
        studies: studies.iter().map(|(name, _)| name.to_string()).collect(),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    write_file(&ctx.path(MANIFEST), &json)?;
    let mut md = format!(
        "Made by `{}` ({} preset) on {}, {}. CSVs and figures: `{}`.\n\n",
        ctx.command,
        ctx.preset.name(),
        ctx.date,
        ctx.machine,
        ctx.out.display()
    );
    for (_, section) in studies {
        md.push_str(&section.markdown);
        md.push('\n');
    }
    write_file(&ctx.path(MARKDOWN), md.as_bytes())?;
    Ok(md)
}

/// The markers between which [`update_benchmarks`] writes the report into BENCHMARKS.md.
pub const BEGIN_MARK: &str = "<!-- report:begin (written by the report binary; edit outside) -->";
/// See [`BEGIN_MARK`].
pub const END_MARK: &str = "<!-- report:end -->";

/// Replaces the text between [`BEGIN_MARK`] and [`END_MARK`] in `doc` by `body`; appends
/// both markers with `body` under `heading` when `doc` has none. Refuses a document with one
/// marker and not the other, either of them twice, or them in the wrong order.
pub fn splice(doc: &str, heading: &str, body: &str) -> Result<String> {
    if doc.matches(BEGIN_MARK).count() > 1 || doc.matches(END_MARK).count() > 1 {
        return Err(ReportError::Input(
            "the report markers appear more than once".into(),
        ));
    }
    match (doc.find(BEGIN_MARK), doc.find(END_MARK)) {
        (Some(b), Some(e)) if b < e => Ok(format!(
            "{}{BEGIN_MARK}\n{body}{END_MARK}{}",
            &doc[..b],
            &doc[e + END_MARK.len()..]
        )),
        (None, None) => Ok(format!(
            "{}\n{heading}\n\n{BEGIN_MARK}\n{body}{END_MARK}\n",
            doc.trim_end()
        )),
        _ => Err(ReportError::Input(format!(
            "the report markers are not one `{BEGIN_MARK}` followed by one `{END_MARK}`"
        ))),
    }
}

/// Writes `markdown` into the report section of the markdown file at `path` ([`splice`]),
/// rewriting the report directory's figure links to be relative to that file.
pub fn update_benchmarks(path: &Path, ctx: &Context, markdown: &str) -> Result<()> {
    let doc = String::from_utf8(read_file(path)?)
        .map_err(|_| ReportError::Input(format!("{}: not UTF-8", path.display())))?;
    let body = relink(markdown, &ctx.out, path.parent().unwrap_or(Path::new(".")));
    let spliced = splice(&doc, "## 10. The report (`report`)", &body)?;
    write_file(path, spliced.as_bytes())
}

/// Figure links in report sections are `](FILE)` relative to the report directory; rewritten
/// relative to `from` where the report directory lies below it.
fn relink(markdown: &str, out: &Path, from: &Path) -> String {
    let (Ok(out), Ok(from)) = (out.canonicalize(), from.canonicalize()) else {
        return markdown.to_string();
    };
    let Ok(rel) = out.strip_prefix(&from) else {
        return markdown.to_string();
    };
    markdown.replace("](./", &format!("]({}/", rel.display()))
}

/// Checks a report directory: the manifest parses, every study it lists produced its CSVs
/// and figures, every CSV parses (a header, rows of the header's width, at least one row),
/// every SVG is an SVG document and every PNG carries the PNG signature; `required` studies
/// must be listed. Returns the files checked.
pub fn check(dir: &Path, required: &[&str]) -> Result<Vec<PathBuf>> {
    let fail = |message: String| ReportError::Check {
        dir: dir.to_path_buf(),
        message,
    };
    let manifest: Manifest = serde_json::from_slice(&read_file(&dir.join(MANIFEST))?)
        .map_err(|e| fail(format!("{MANIFEST}: {e}")))?;
    for study in required {
        if !manifest.studies.iter().any(|s| s == study) {
            return Err(fail(format!("study {study} did not run")));
        }
    }
    let mut checked = Vec::new();
    for study in &manifest.studies {
        let (csvs, figures) =
            expected_files(study).ok_or_else(|| fail(format!("unknown study {study}")))?;
        for csv in csvs {
            let path = dir.join(csv);
            let text = String::from_utf8(read_file(&path)?)
                .map_err(|_| fail(format!("{csv}: not UTF-8")))?;
            let parsed = table::parse_csv(&text).map_err(|e| fail(format!("{csv}: {e}")))?;
            if parsed.rows.is_empty() {
                return Err(fail(format!("{csv}: no rows")));
            }
            checked.push(path);
        }
        for stem in figures {
            let svg = dir.join(format!("{stem}.svg"));
            let text = String::from_utf8(read_file(&svg)?)
                .map_err(|_| fail(format!("{stem}.svg: not UTF-8")))?;
            if !text.contains("<svg") || !text.trim_end().ends_with("</svg>") {
                return Err(fail(format!("{stem}.svg: not an SVG document")));
            }
            let png = dir.join(format!("{stem}.png"));
            let bytes = read_file(&png)?;
            if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || bytes.len() < 1000 {
                return Err(fail(format!("{stem}.png: not a PNG image")));
            }
            checked.extend([svg, png]);
        }
    }
    Ok(checked)
}

/// The machine in words: CPU model, logical CPUs, memory (from `/proc` where present).
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb >> 20)
    });
    match mem {
        Some(gib) => format!("{cpu}, {cpus} logical CPUs, {gib} GiB"),
        None => format!("{cpu}, {cpus} logical CPUs"),
    }
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_794), (2026, 12, 7));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn splice_replaces_between_markers_or_appends() {
        let doc = format!("# B\n\ntext\n{BEGIN_MARK}\nold\n{END_MARK}\ntail\n");
        let out = splice(&doc, "## R", "new\n").unwrap();
        assert_eq!(
            out,
            format!("# B\n\ntext\n{BEGIN_MARK}\nnew\n{END_MARK}\ntail\n")
        );
        let appended = splice("# B\n\ntext\n\n", "## R", "body\n").unwrap();
        assert_eq!(
            appended,
            format!("# B\n\ntext\n## R\n\n{BEGIN_MARK}\nbody\n{END_MARK}\n")
        );
        // Idempotent once the markers exist.
        assert_eq!(splice(&appended, "## R", "body\n").unwrap(), appended);
        for bad in [
            format!("{END_MARK}\n{BEGIN_MARK}\n"),
            format!("x {BEGIN_MARK}\n"),
            format!("x {END_MARK}\n"),
            format!("{BEGIN_MARK}\n{END_MARK}\n{BEGIN_MARK}\n{END_MARK}\n"),
        ] {
            assert!(splice(&bad, "## R", "b").is_err(), "{bad}");
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("skillzip-report-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn check_finds_missing_and_malformed_files() {
        if let Err(e) = plot::font() {
            println!("skipped: {e}");
            return;
        }
        let dir = temp_dir("check");
        let manifest = Manifest {
            preset: "quick".into(),
            date: "2026-12-07".into(),
            machine: "m".into(),
            command: "c".into(),
            studies: vec![kernels::STUDY.into()],
        };
        write_file(&dir.join(MANIFEST), &serde_json::to_vec(&manifest).unwrap()).unwrap();
        // Nothing written yet.
        assert!(check(&dir, &[]).is_err());
        write_file(&dir.join("kernels.csv"), b"a,b\n1,2\n").unwrap();
        let fig = plot::Figure {
            stem: "kernel_time".into(),
            title: "t".into(),
            notes: vec!["n".into()],
            x: plot::Axis::linear("x"),
            y: plot::Axis::log("y"),
            series: vec![plot::Series::line("s", vec![(1.0, 1.0), (2.0, 10.0)])],
            legend: plot::Corner::UpperRight,
        };
        plot::render(&fig, &dir).unwrap();
        assert_eq!(check(&dir, &[kernels::STUDY]).unwrap().len(), 3);
        // A study that did not run is refused when required.
        assert!(check(&dir, &[serving::STUDY]).is_err());
        // A ragged CSV, a CSV without rows, a PNG that is not one.
        write_file(&dir.join("kernels.csv"), b"a,b\n1,2,3\n").unwrap();
        assert!(check(&dir, &[]).is_err());
        write_file(&dir.join("kernels.csv"), b"a,b\n").unwrap();
        assert!(check(&dir, &[]).is_err());
        write_file(&dir.join("kernels.csv"), b"a,b\n1,2\n").unwrap();
        write_file(&dir.join("kernel_time.png"), b"<svg></svg>").unwrap();
        assert!(check(&dir, &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
