//! `statefun-loadgen`: flags in, progress on stderr, the summary on stdout.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use statefun_loadgen::config::{Args, Load};
use statefun_loadgen::plot;
use statefun_loadgen::report::{self, Report};
use statefun_loadgen::run::{self, Phase, Progress};

fn main() -> ExitCode {
    let args = Args::parse();
    match generate(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // An operating error (a bad flag, an unreachable target): the message, no backtrace.
            eprintln!("statefun-loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn generate(args: &Args) -> anyhow::Result<()> {
    let config = args.config()?;
    let connections = counted(config.load.connections(), "connection");
    let pacing = match config.load {
        Load::Closed { .. } => format!("closed loop on {connections}"),
        Load::Open { rate_per_s, .. } => format!("open loop, {rate_per_s} requests/s on up to {connections}"),
    };
    let run = format!("{} {}, {pacing}", config.target, args.workload_name());
    eprintln!(
        "statefun-loadgen: {run}, {}, {} s warmup + {} s measured",
        counted(config.threads, "thread"),
        config.warmup.as_secs_f64(),
        config.duration.as_secs_f64()
    );

    let terminal = io::stderr().is_terminal();
    let report = run::run(&config, |progress| show(progress, terminal))?;
    if terminal {
        eprintln!();
    }
    print_summary(&report);
    if let Some(path) = &args.json {
        write_file(path, |out| out.write_all(report.summary().to_json().as_bytes()))?;
    }
    if let Some(path) = &args.hgrm {
        write_file(path, |out| report::write_hgrm(&report.tally.latency_us, out))?;
    }
    if let Some(path) = &args.plot {
        let title = format!("Latency by percentile: {run}");
        write_file(path, |out| plot::write_svg(&report.tally.latency_us, &title, out))?;
    }
    Ok(())
}

/// `1 thread`, `2 threads`.
fn counted(count: u32, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// One progress line on stderr: rewritten in place on a terminal, one per line otherwise.
fn show(progress: &Progress, terminal: bool) {
    let phase = match progress.phase {
        Phase::Warmup => "warmup",
        Phase::Measuring => "measuring",
        Phase::Draining => "draining",
    };
    let p99 = progress.latency_us_p99.map_or_else(|| "-".to_string(), |p99| format!("{p99} us"));
    let line = format!(
        "{phase:9} {:10.0} requests/s  errors {}  p99 {p99}  {:.0} s left",
        progress.rate_per_s,
        progress.errors,
        progress.left.as_secs_f64().ceil()
    );
    if terminal {
        eprint!("\r{line:<79}");
    } else {
        eprintln!("{line}");
    }
}

#[allow(clippy::print_stdout)] // The summary is the command's output.
fn print_summary(report: &Report) {
    print!("{report}");
}

fn write_file(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    write(&mut out).and_then(|()| out.flush()).with_context(|| format!("writing {}", path.display()))
}
