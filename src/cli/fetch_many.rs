//! `tickerd fetch PLUGIN TICKER... [--tickers-file F] [--out DIR]`: many
//! tickers through the same pipeline, cache and budget as one (README,
//! "Downloading many tickers"). One JSON line per ticker to stdout, or
//! `DIR/<TICKER>.csv|json`; a progress bar on stderr when it is a terminal.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::OutFormat;
use crate::config::{Config, Flags};
use crate::daemon::Daemon;
use crate::error::FetchError;
use crate::model::{DateRange, PluginName, Ticker};
use crate::pipeline::{BulkOptions, MAX_BULK_TICKERS, error_line};

/// A ticker refused with a Retry-After up to this is tried again (the CLI waits).
const RETRY_WITHIN: Duration = Duration::from_secs(60);

/// `tickerd fetch`'s arguments: one ticker prints its body, several (or
/// `--tickers-file`, `--out`) go through [`run`].
#[derive(clap::Args, Debug)]
pub(super) struct Args {
    pub plugin: String,
    /// One ticker prints its body; several (or --tickers-file, --out)
    /// print one JSON line each, or write DIR/<TICKER>.csv|json.
    #[arg(required_unless_present = "tickers_file")]
    pub tickers: Vec<String>,
    /// Tickers to fetch, one or more a line (`#` comments; `-` is stdin).
    #[arg(long, value_name = "FILE")]
    pub tickers_file: Option<PathBuf>,
    /// Write DIR/<TICKER>.csv or .json (per --format) instead of stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub start: Option<String>,
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub end: Option<String>,
    #[arg(long)]
    pub refresh: bool,
    #[arg(long, value_enum, default_value_t = OutFormat::Json)]
    pub format: OutFormat,
}

/// Tickers from the arguments, then the file (one or more a line, separated
/// by commas or blanks; `#` starts a comment; `-` is stdin), upper-cased,
/// duplicates dropped.
fn collect(args: &[String], file: Option<&Path>) -> Result<Vec<Ticker>, String> {
    let mut out: Vec<Ticker> = Vec::new();
    let mut push = |raw: &str, wherein: &str| -> Result<(), String> {
        let t = Ticker::parse(raw).map_err(|e| format!("{wherein}: {raw:?} is not a ticker: {}", e.message))?;
        if !out.contains(&t) {
            out.push(t);
        }
        Ok(())
    };
    for a in args {
        push(a, "argument")?;
    }
    if let Some(f) = file {
        let text = if f == Path::new("-") {
            std::io::read_to_string(std::io::stdin())
                .map_err(|e| format!("--tickers-file -: cannot read stdin: {e}"))?
        } else {
            std::fs::read_to_string(f).map_err(|e| format!("--tickers-file {}: cannot read it: {e}", f.display()))?
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            for item in line.split(|c: char| c == ',' || c.is_whitespace()) {
                if !item.is_empty() {
                    push(item, &format!("{}:{}", f.display(), i + 1))?;
                }
            }
        }
    }
    if out.is_empty() {
        return Err("fetch needs at least one TICKER or a --tickers-file that names some".into());
    }
    Ok(out)
}

fn bar(total: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    // Drawn on stderr, and only when stderr is a terminal.
    let pb = ProgressBar::new(total as u64);
    let style = ProgressStyle::with_template("{spinner} {pos}/{len} [{bar:30}] {per_sec:.0} ETA {eta} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

fn message(failed: usize, waiting: bool) -> String {
    let mut m = format!("failed {failed}");
    if waiting {
        m.push_str(" · waiting for the rate limit");
    }
    m
}

/// Writes `bytes` to `dir/name` through a temporary file, so a file named
/// for a ticker is always whole.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))
}

pub(super) fn run(config: Config, flags: Flags, a: Args) -> ExitCode {
    let usage = |m: String| {
        eprintln!("tickerd: {m}");
        ExitCode::from(2)
    };
    let today = chrono::Utc::now().date_naive();
    let plugin = match PluginName::parse(&a.plugin) {
        Ok(p) => p,
        Err(e) => return usage(e.to_string()),
    };
    let range = match DateRange::from_request(a.start.as_deref(), a.end.as_deref(), today) {
        Ok(r) => r,
        Err(e) => return usage(e.to_string()),
    };
    let tickers = match collect(&a.tickers, a.tickers_file.as_deref()) {
        Ok(t) => t,
        Err(m) => return usage(m),
    };
    if a.out.is_none() && matches!(a.format, OutFormat::Csv) {
        return usage(
            "--format csv with several tickers needs --out DIR (stdout carries one JSON line per ticker)".into(),
        );
    }
    if let Some(dir) = &a.out
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("tickerd: --out {}: cannot create it: {e}", dir.display());
        return ExitCode::from(1);
    }
    let Ok(rt) = super::runtime() else {
        return ExitCode::from(1);
    };
    rt.block_on(async move {
        let daemon = Daemon::new(config, flags);
        daemon.start().await;
        let total = tickers.len();
        let started = Instant::now();
        // Chunks of at most MAX_BULK_TICKERS, one after the other.
        let pb = bar(total, a.quiet);
        pb.set_message(message(0, false));
        let mut failed: Vec<(Ticker, FetchError)> = Vec::new();
        for chunk in tickers.chunks(MAX_BULK_TICKERS) {
            let opts = BulkOptions {
                refresh: a.refresh,
                retry_within: RETRY_WITHIN,
            };
            let mut bulk = match daemon.get_many(&plugin, chunk.to_vec(), range, opts) {
                Ok(b) => b,
                Err(e) => {
                    pb.finish_and_clear();
                    eprintln!("tickerd: {} : {e}", e.code());
                    return ExitCode::from(1);
                }
            };
            let retrying = Arc::clone(&bulk.retrying);
            loop {
                let next = tokio::time::timeout(Duration::from_millis(200), bulk.rx.recv()).await;
                let waiting = daemon.budget().waiting(plugin.as_str()) > 0
                    || retrying.load(std::sync::atomic::Ordering::Relaxed) > 0;
                let (t, res) = match next {
                    Err(_) => {
                        pb.set_message(message(failed.len(), waiting));
                        continue;
                    }
                    Ok(None) => break,
                    Ok(Some(x)) => x,
                };
                match res {
                    Ok(answer) => match &a.out {
                        None => pb.suspend(|| println!("{}", String::from_utf8_lossy(&answer.to_json()))),
                        Some(dir) => {
                            let (name, bytes) = match a.format {
                                OutFormat::Json => {
                                    let mut b = answer.to_json();
                                    b.push(b'\n');
                                    (format!("{t}.json"), b)
                                }
                                OutFormat::Csv => {
                                    (format!("{t}.csv"), answer.to_csv().unwrap_or_default().into_bytes())
                                }
                            };
                            if let Err(e) = write_atomic(dir, &name, &bytes) {
                                let err =
                                    FetchError::Internal(format!("cannot write {}: {e}", dir.join(&name).display()));
                                pb.suspend(|| eprintln!("tickerd: {t}: {err}"));
                                failed.push((t, err));
                            }
                        }
                    },
                    Err(e) => {
                        match &a.out {
                            None => pb.suspend(|| print!("{}", String::from_utf8_lossy(&error_line(&t, &e)))),
                            Some(_) => pb.suspend(|| eprintln!("tickerd: {t}: {} : {e}", e.code())),
                        }
                        failed.push((t, e));
                    }
                }
                pb.inc(1);
                pb.set_message(message(failed.len(), waiting));
            }
        }
        pb.finish();
        if failed.is_empty() {
            if !a.quiet {
                eprintln!(
                    "tickerd: {total} ticker(s) fetched in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
            }
            return ExitCode::SUCCESS;
        }
        let mut names: Vec<String> = failed
            .iter()
            .take(10)
            .map(|(t, e)| format!("{t} ({})", e.code()))
            .collect();
        if failed.len() > 10 {
            names.push(format!("and {} more", failed.len() - 10));
        }
        eprintln!(
            "tickerd: {} of {total} tickers failed: {}",
            failed.len(),
            names.join(", ")
        );
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickers_from_arguments_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.txt");
        std::fs::write(&f, "# S&P sample\nmsft, aapl\n\nbrk.b  # comment\nAAPL\n").unwrap();
        let t = collect(&["nvda".into()], Some(&f)).unwrap();
        let names: Vec<&str> = t.iter().map(Ticker::as_str).collect();
        assert_eq!(names, ["NVDA", "MSFT", "AAPL", "BRK.B"]);
        std::fs::write(&f, "AAPL\nNOT!A\n").unwrap();
        let e = collect(&[], Some(&f)).unwrap_err();
        assert!(e.contains("t.txt:2") && e.contains("\"NOT!A\""), "{e}");
        assert!(collect(&[], None).unwrap_err().contains("at least one"));
    }

    #[test]
    fn the_message_says_when_it_waits() {
        assert_eq!(message(2, false), "failed 2");
        assert_eq!(message(0, true), "failed 0 · waiting for the rate limit");
    }
}
