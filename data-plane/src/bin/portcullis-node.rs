//! `portcullis-node`: parses the configuration, starts the node, waits for a shutdown
//! signal. Everything else lives in the library.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use portcullis_data_plane::config::{EXIT_CODE_BAD_CONFIG, ProcessEnv, RawNodeConfig};
use portcullis_data_plane::node::{Node, shutdown_signal};
use portcullis_data_plane::telemetry;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc malloc: a proxied request allocates and frees many small
/// buffers (headers, body chunks, records) across worker threads, where glibc's arenas
/// spent about a fifth of a node's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bad_config_exit() -> ExitCode {
    ExitCode::from(u8::try_from(EXIT_CODE_BAD_CONFIG).unwrap_or(1))
}

fn main() -> ExitCode {
    let raw = match RawNodeConfig::try_parse() {
        Ok(raw) => raw,
        Err(error) if error.use_stderr() => {
            let _ = error.print();
            return bad_config_exit();
        }
        Err(help_or_version) => {
            let _ = help_or_version.print();
            return ExitCode::SUCCESS;
        }
    };
    let config = match raw.validate(&ProcessEnv) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("portcullis-node: invalid configuration:");
            for violation in &errors.violations {
                eprintln!("  {violation}");
            }
            return bad_config_exit();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portcullis-node: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's gRPC client runs on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        match telemetry::init(&config) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("portcullis-node: {error}");
                return bad_config_exit();
            }
        }
    };
    let result = runtime.block_on(async {
        let node = Node::start(config).await?;
        let mut stdout = std::io::stdout().lock();
        // The admin line first: whoever waits for the listening line finds both.
        if let Some(admin) = node.admin_address() {
            writeln!(stdout, "portcullis-node admin listening on {admin}")?;
        }
        writeln!(
            stdout,
            "portcullis-node listening on {}",
            node.local_address()
        )?;
        stdout.flush()?;
        drop(stdout);
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            trigger.cancel();
        });
        node.serve(shutdown).await?;
        anyhow::Ok(())
    });
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "portcullis-node failed");
            ExitCode::FAILURE
        }
    };
    {
        let _runtime = runtime.enter();
        telemetry.shutdown();
    }
    code
}
