//! The `securesock-bench` binary: parse, run the load (or hold the idle or established burst), report;
//! or, when the first argument names one (`sample`, `record`, `report`, `publish`), run one of the
//! bench script's bookkeeping subcommands. Everything it does lives in the `securesock_bench`
//! library, where the tests can reach it.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

use securesock_bench as loadgen;

/// Bad arguments or a setup failure (unreadable CA, unresolvable target).
const EXIT_SETUP: u8 = 2;
/// The run completed but not one connection succeeded.
const EXIT_ALL_FAILED: u8 = 1;

fn main() -> ExitCode {
    // A load run's first argument is a HOST:PORT, which no subcommand name can be.
    if std::env::args()
        .nth(1)
        .is_some_and(|a| loadgen::tools::NAMES.contains(&a.as_str()))
    {
        return match loadgen::tools::Tools::try_parse_from(std::env::args_os()) {
            Ok(tools) => match loadgen::tools::run(tools) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("{e:#}")),
            },
            Err(e) => {
                let _ = e.print();
                if e.use_stderr() {
                    ExitCode::from(EXIT_SETUP)
                } else {
                    ExitCode::SUCCESS
                }
            }
        };
    }
    let plan = match loadgen::parse_args(std::env::args_os()) {
        Ok(plan) => plan,
        Err(e) => {
            // clap prints help and version to stdout (exit 0) and errors to stderr (exit 2).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_SETUP)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let mut stdout = std::io::stdout();
    if plan.idle.is_some() {
        return match loadgen::run_idle(&plan, &mut stdout) {
            Ok(burst) if burst.held.is_empty() => ExitCode::from(EXIT_ALL_FAILED),
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}")),
        };
    }
    if plan.established.is_some() {
        return match loadgen::run_established(&plan, &mut stdout) {
            Ok(burst) if burst.held.is_empty() => ExitCode::from(EXIT_ALL_FAILED),
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}")),
        };
    }
    let summary = match loadgen::run(&plan) {
        Ok(summary) => summary,
        Err(e) => return fail(&format!("{e:#}")),
    };
    let text = if plan.json {
        format!("{}\n", summary.to_json())
    } else {
        summary.table()
    };
    // A closed stdout (piped into `head`) is not worth another error.
    let _ = stdout.write_all(text.as_bytes());
    if summary.ok == 0 {
        ExitCode::from(EXIT_ALL_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "securesock-bench: error: {message}");
    ExitCode::from(EXIT_SETUP)
}
