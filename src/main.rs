//! The `shellrelay` binary: parses the command line and runs a role.

use std::process::ExitCode;

use shellrelay::cli::LogFormat;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = shellrelay::cli::parse();
    shellrelay::raise_fd_limit();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(cli.default_log_level())),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The current span carries the session and host ids; the list of
        // enclosing spans would repeat them.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_ansi(false)
            .init(),
    }
    let runtime = if cli.single_threaded() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli.run());
    // `connect` reads stdin on a blocking thread whose read cannot be
    // cancelled: do not wait for it (or anything else) on the way out.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
