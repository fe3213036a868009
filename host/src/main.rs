//! The `sluice` command.

use clap::{Parser, Subcommand};
use sluice::admin::QueueOrder;
use sluice::cli;
use sluice::config::Config;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: every session allocates and frees on whichever
/// worker runs it, and glibc's arenas took 6% of the relay's CPU under load (profiled
/// with the campus chain), with lock contention between workers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice: an SMTP relay whose every decision is made by WebAssembly policy modules.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Environment:\n  SLUICE_LOG  what is logged, as tracing's filters say it: a level (debug), or \
                  levels by module (info,sluice::policy=debug). Default: info for serve, \
                  warn for the other commands."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        /// The configuration file; without it, ./sluice.toml if present, else the defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check everything `serve` would load — the configuration file, the policy chain and
    /// each module, the DKIM keys, the TLS certificate, the store, the log filter — then
    /// exit (2 when something is wrong).
    CheckConfig {
        /// The configuration file (default: ./sluice.toml if there is one, else the built-in
        /// defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the running relay's policy chain: modules, hashes, counts, the last reload.
    Status {
        /// The configuration file (default: ./sluice.toml if there is one, else the built-in
        /// defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Ask the running relay to reload its policy chain now.
    Reload {
        /// The configuration file (default: ./sluice.toml if there is one, else the built-in
        /// defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Look at the queue and steer it.
    Queue {
        /// The configuration file (default: ./sluice.toml if there is one, else the built-in
        /// defaults).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// The client addresses registered to relay, and those blocked.
    Registry {
        /// The configuration file (default: ./sluice.toml if there is one, else the built-in
        /// defaults).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// The users who may authenticate on the submission and smtps listeners.
    User {
        /// The configuration file (default: ./sluice.toml if there is one, else the built-in
        /// defaults).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Bearer tokens for the registration portal's JSON API (/api/).
    Token {
        /// The configuration file (default: ./sluice.toml if there is one, else the built-in
        /// defaults).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Try policy modules before they go live.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// An SMTP session on this terminal as if from another client, through the configured
    /// chain, showing each module's decision; nothing is delivered (as Exim's -bh).
    Session {
        /// The configuration file (default: ./sluice.toml if there is one, else the built-in
        /// defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The client's IP address.
        #[arg(long)]
        peer: IpAddr,
        /// Act as if the client had negotiated TLS.
        #[arg(long)]
        tls: bool,
        /// Act as if the client had authenticated as this user.
        #[arg(long)]
        auth: Option<String>,
    },
    /// Write the manual pages (sluice.8, and sluice-COMMAND.8 for each command) into a
    /// folder; for packagers.
    #[command(hide = true)]
    Manpages {
        /// Where to write them.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Every queued message: id, age, size, sender, next attempt, recipients waiting, last error.
    List {
        /// One JSON object per message, a line each (the envelope as the spool keeps it).
        #[arg(long)]
        json: bool,
        /// Only messages from this sender (`<>` for bounces).
        #[arg(long)]
        sender: Option<String>,
        /// Only messages with a recipient waiting in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages in this state.
        #[arg(long, value_enum)]
        state: Option<cli::queue::State>,
        /// Only messages queued at least this long ago (`30m`, `2h`, `1d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
    /// One message: its envelope, each recipient's state, and its header fields.
    Show {
        /// The message's queue id (as in the log and `queue list`).
        id: String,
        /// The whole message, not only its header fields.
        #[arg(long)]
        body: bool,
    },
    /// Try every waiting message now (or those with a recipient waiting in one domain).
    Flush {
        /// Only messages with a recipient waiting in this domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Return a message to its sender now, with a bounce (DSN), and remove it from the
    /// queue.
    Bounce {
        /// The message's queue id.
        id: String,
    },
    /// Keep a message in the queue, undelivered, until released.
    Hold {
        /// The message's queue id.
        id: String,
    },
    /// Let a held message be delivered, now.
    Release {
        /// The message's queue id.
        id: String,
    },
    /// Remove a message (or, with --all, every message) from the queue.
    Delete {
        /// The message's queue id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every message in the queue, held ones too.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Register an address (or a network, as CIDR) to relay; a confirmation is mailed to
    /// the contact.
    Add {
        /// The address, or a network as CIDR (192.0.2.0/28).
        ip: String,
        /// The admin of record (NetID or user name).
        #[arg(long)]
        admin: String,
        /// Where the confirmation and later notices go.
        #[arg(long)]
        contact: String,
        /// The department responsible.
        #[arg(long)]
        dept: String,
        /// What the machine sends mail for.
        #[arg(long)]
        purpose: String,
    },
    /// Every registration and block.
    List,
    /// The registration and block covering an address.
    Show {
        /// The client address.
        ip: String,
    },
    /// Remove a registration.
    Remove {
        /// The address or network as registered.
        ip: String,
    },
    /// Refuse an address (or network) from now on, without notice.
    Block {
        /// The address, or a network as CIDR.
        ip: String,
        /// What the client is told, and the record says.
        #[arg(long)]
        reason: String,
    },
    /// Lift a block.
    Unblock {
        /// The address or network as blocked.
        ip: String,
    },
    /// Every change to the registry (who, when, from where, what), oldest first.
    History {
        /// Only the changes to this address or network.
        ip: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is read from standard input.
    Add {
        /// The user name, as given in AUTH or at the portal's sign-in.
        name: String,
        /// sender: authenticates on the submission listeners; postmaster: signs in to the
        /// registration portal to review requests (never good for SMTP AUTH).
        #[arg(long, value_enum, default_value = "sender")]
        role: cli::user::Role,
    },
    /// Remove a user.
    Remove {
        /// The user name.
        name: String,
    },
    /// Every user (never a password or hash).
    List,
    /// Change a user's password, read from standard input.
    Passwd {
        /// The user name.
        name: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token; its secret is printed once, on standard output.
    Add {
        /// The token's name: a department token acts as the admin of record of this name.
        name: String,
        /// postmaster: every operation; department: requests, and the registrations whose
        /// admin of record is NAME.
        #[arg(long, value_enum)]
        role: cli::token::Role,
    },
    /// Remove a token; it stops working at once.
    Remove {
        /// The token's name.
        name: String,
    },
    /// Every token (never a secret).
    List,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load a module as the relay would; print what it is, or why it is refused.
    Check {
        /// The module: a WebAssembly component (.wasm), or builtin:NAME.
        module: String,
        /// Use this configuration's compiled-module cache (default: ./sluice.toml's if
        /// there is one, else ~/.cache/sluice).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the scenarios of a file through a module; fail when a decision is not the one
    /// expected.
    Test {
        /// The module: a WebAssembly component (.wasm), or builtin:NAME.
        module: String,
        /// The scenarios: a TOML file of sessions and the decisions expected.
        scenarios: PathBuf,
        /// Use this configuration's compiled-module cache (default: ./sluice.toml's if
        /// there is one, else ~/.cache/sluice).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Compile a module into the relay's cache ahead of a deploy, so that dropping it into
    /// the policies directory swaps it in at once (run as the relay's user).
    Compile {
        /// The module: a WebAssembly component (.wasm), or builtin:NAME.
        module: String,
        /// The relay's configuration (default: ./sluice.toml if there is one, else the
        /// built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Create a policy module project: a small real module, its unit tests, a scenario
    /// file and a README.
    New {
        /// The project's name (a folder of that name is made here).
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum, default_value = "rust")]
        lang: cli::project::Lang,
    },
    /// Build a policy module project into DIR/NAME.wasm (with cargo, componentize-py or
    /// componentize-js, as the project is written).
    Build {
        /// The project's folder (default: this one).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// Writes sluice(8) and a page for every command and subcommand (`sluice-queue-list.8`),
/// from the CLI's own definitions, so the pages say what `--help` says. Returns how many.
fn write_manpages(dir: &std::path::Path) -> std::io::Result<usize> {
    use clap::CommandFactory;
    fn write(dir: &std::path::Path, command: clap::Command, name: &str) -> std::io::Result<usize> {
        let command = command
            .name(name.to_string())
            .bin_name(name.replace('-', " "))
            .version(env!("CARGO_PKG_VERSION"));
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone())
            .section("8")
            .manual("Sluice")
            .render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.8")), page)?;
        let mut count = 1;
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            count += write(dir, sub.clone(), &format!("{name}-{}", sub.get_name()))?;
        }
        Ok(count)
    }
    std::fs::create_dir_all(dir)?;
    write(dir, Cli::command(), "sluice")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A test session shows every module's decision as it goes; the relay logs what matters.
    let default_log = match cli.command {
        Command::Session { .. } => "warn,sluice::policy=debug",
        Command::Policy { .. }
        | Command::Status { .. }
        | Command::Reload { .. }
        | Command::Queue { .. }
        | Command::Registry { .. }
        | Command::User { .. }
        | Command::Token { .. }
        | Command::Manpages { .. } => "warn",
        _ => "info",
    };
    // The relay logs as its configuration says, once it is read (see `serve`).
    if !matches!(cli.command, Command::Serve { .. }) {
        let _ = sluice::logging::init(default_log, &Default::default(), "localhost");
    }
    dispatch(cli.command)
}

/// Runs one command. One arm per command (long, but each arm is the whole story of its
/// command: which configuration it loads and which function does the work).
fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Serve { config: path } => {
            let Some(config) = load_config(path.clone()) else {
                return ExitCode::from(2);
            };
            if let Err(e) = sluice::logging::init("info", &config.log, &config.hostname) {
                eprintln!("sluice: {e}");
                return ExitCode::from(2);
            }
            run(|| async {
                match sluice::server::serve(config, path).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("sluice: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::CheckConfig { config } => cli::check::check_config(config.as_deref()),
        Command::Manpages { dir } => match write_manpages(&dir) {
            Ok(count) => {
                println!("{count} manual pages written to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice: {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::Status { config } => match load_config(config) {
            Some(config) => cli::status::status(&config),
            None => ExitCode::from(2),
        },
        Command::Reload { config } => match load_config(config) {
            Some(config) => cli::status::reload(&config),
            None => ExitCode::from(2),
        },
        Command::Queue { config, command } => {
            let Some(config) = load_config(config) else {
                return ExitCode::from(2);
            };
            match command {
                QueueCommand::List {
                    json,
                    sender,
                    domain,
                    state,
                    older_than,
                } => {
                    let filter = cli::queue::Filter {
                        sender,
                        domain,
                        state,
                        older_than,
                    };
                    cli::queue::list(&config, &filter, json)
                }
                QueueCommand::Show { id, body } => cli::queue::show(&config, &id, body),
                QueueCommand::Flush { domain } => {
                    cli::queue::order(&config, QueueOrder::Flush { domain })
                }
                QueueCommand::Bounce { id } => {
                    cli::queue::order(&config, QueueOrder::Bounce { id })
                }
                QueueCommand::Hold { id } => cli::queue::order(&config, QueueOrder::Hold { id }),
                QueueCommand::Release { id } => {
                    cli::queue::order(&config, QueueOrder::Release { id })
                }
                QueueCommand::Delete { id: Some(id), .. } => {
                    cli::queue::order(&config, QueueOrder::Delete { id })
                }
                QueueCommand::Delete { id: None, .. } => {
                    cli::queue::order(&config, QueueOrder::DeleteAll)
                }
            }
        }
        Command::Registry { config, command } => {
            let Some(config) = load_config(config) else {
                return ExitCode::from(2);
            };
            match command {
                RegistryCommand::Add {
                    ip,
                    admin,
                    contact,
                    dept,
                    purpose,
                } => cli::registry::add(
                    &config,
                    cli::registry::NewRegistration {
                        network: ip,
                        admin,
                        contact,
                        department: dept,
                        purpose,
                    },
                ),
                RegistryCommand::List => cli::registry::list(&config),
                RegistryCommand::Show { ip } => cli::registry::show(&config, &ip),
                RegistryCommand::Remove { ip } => cli::registry::remove(&config, &ip),
                RegistryCommand::Block { ip, reason } => {
                    cli::registry::block(&config, &ip, &reason)
                }
                RegistryCommand::Unblock { ip } => cli::registry::unblock(&config, &ip),
                RegistryCommand::History { ip } => cli::registry::history(&config, ip.as_deref()),
            }
        }
        Command::Token { config, command } => {
            let Some(config) = load_config(config) else {
                return ExitCode::from(2);
            };
            match command {
                TokenCommand::Add { name, role } => cli::token::add(&config, &name, role),
                TokenCommand::Remove { name } => cli::token::remove(&config, &name),
                TokenCommand::List => cli::token::list(&config),
            }
        }
        Command::User { config, command } => {
            let Some(config) = load_config(config) else {
                return ExitCode::from(2);
            };
            match command {
                UserCommand::Add { name, role } => cli::user::add(&config, &name, role),
                UserCommand::Remove { name } => cli::user::remove(&config, &name),
                UserCommand::List => cli::user::list(&config),
                UserCommand::Passwd { name } => cli::user::passwd(&config, &name),
            }
        }
        Command::Policy {
            command: PolicyCommand::Check { module, config },
        } => {
            let config = policy_config(config);
            let module = cli::policy::Module::parse(&module);
            run(|| cli::policy::check(&module, config.as_ref()))
        }
        Command::Policy {
            command:
                PolicyCommand::Test {
                    module,
                    scenarios,
                    config,
                },
        } => {
            let config = policy_config(config);
            let module = cli::policy::Module::parse(&module);
            run(|| cli::policy::test(&module, &scenarios, config.as_ref()))
        }
        Command::Policy {
            command: PolicyCommand::Compile { module, config },
        } => {
            let Some(config) = load_config(config) else {
                return ExitCode::from(2);
            };
            cli::policy::compile(&cli::policy::Module::parse(&module), &config)
        }
        Command::Policy {
            command: PolicyCommand::New { name, lang },
        } => cli::project::new(&name, lang),
        Command::Policy {
            command: PolicyCommand::Build { dir },
        } => cli::project::build(&dir),
        Command::Session {
            config,
            peer,
            tls,
            auth,
        } => {
            let Some(config) = load_config(config) else {
                return ExitCode::from(2);
            };
            let client = cli::session::Client { peer, tls, auth };
            run(|| cli::session::run(config, client))
        }
    }
}

/// The configuration whose cache the policy commands use: the one named, or ./sluice.toml;
/// none (the user's own cache) rather than the defaults, whose spool is relative to
/// wherever the command runs.
fn policy_config(path: Option<PathBuf>) -> Option<Config> {
    if path.is_none() && !std::path::Path::new("sluice.toml").exists() {
        return None;
    }
    load_config(path)
}

fn load_config(path: Option<PathBuf>) -> Option<Config> {
    match Config::load(path.as_deref()) {
        Ok((config, _)) => Some(config),
        Err(e) => {
            eprintln!("sluice: configuration error: {e}");
            None
        }
    }
}

/// Runs `task` on a multi-threaded runtime, and does not wait for leftover blocking reads
/// (a terminal's stdin).
fn run<F: Future<Output = ExitCode>>(task: impl FnOnce() -> F) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(task());
    runtime.shutdown_background();
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command and every argument says what it is in `--help` (and so in the manual
    /// pages made from these definitions).
    #[test]
    fn every_command_and_argument_has_help() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            if command.get_about().is_none() {
                missing.push(path.clone());
            }
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_name() != "help" {
                    check(sub, &path, missing);
                }
            }
        }
        let command = Cli::command();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        check(&command, "", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
