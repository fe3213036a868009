//! `sluice user add|remove|list|passwd`: the users who may authenticate on the submission
//! and smtps listeners. A password is read from standard input, never from the command
//! line (where `ps` and shell history would show it); at a terminal, without echo.

pub use crate::auth::users::Role;
use crate::auth::users::Users;
use crate::config::Config;
use crate::registry::notice::date_as;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

/// `sluice user add NAME [--role postmaster]`.
pub fn add(config: &Config, name: &str, role: Role) -> ExitCode {
    let result = (|| {
        let users = open(config)?;
        crate::auth::users::check_name(name)?;
        let password = read_password(name)?;
        users.add(name, &password, role)
    })();
    done(result.map(|()| format!("added {name} ({})", role.as_str())))
}

/// `sluice user passwd NAME`.
pub fn passwd(config: &Config, name: &str) -> ExitCode {
    let result = (|| {
        let users = open_existing(config)?;
        let password = read_password(name)?;
        if !users.set_password(name, &password)? {
            anyhow::bail!("no user {name}");
        }
        Ok(format!("changed the password of {name}"))
    })();
    done(result)
}

/// `sluice user remove NAME`.
pub fn remove(config: &Config, name: &str) -> ExitCode {
    let result = (|| {
        if !open_existing(config)?.remove(name)? {
            anyhow::bail!("no user {name}");
        }
        Ok(format!("removed {name}"))
    })();
    done(result)
}

/// `sluice user list`.
pub fn list(config: &Config) -> ExitCode {
    let users = match open_existing(config).and_then(|u| u.list()) {
        Ok(users) => users,
        Err(e) => return done(Err(e)),
    };
    println!(
        "{:<32} {:<10} {:<11} password changed",
        "user", "role", "added"
    );
    for u in &users {
        println!(
            "{:<32} {:<10} {:<11} {}",
            u.name,
            u.role.as_str(),
            date_as(u.created_at, "%Y-%m-%d"),
            date_as(u.changed_at, "%Y-%m-%d %H:%M UTC")
        );
    }
    println!("{} users", users.len());
    ExitCode::SUCCESS
}

fn open(config: &Config) -> anyhow::Result<Users> {
    let store = crate::store::Location::of(config);
    Users::open(&store).map_err(|e| e.context(format!("store {store}")))
}

/// The users of an existing store (see [`crate::store::existing`]).
fn open_existing(config: &Config) -> anyhow::Result<Users> {
    crate::store::existing(config)?;
    open(config)
}

pub(super) fn done(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(said) => {
            println!("{said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The first line of standard input; at a terminal, asked for with echo off.
fn read_password(name: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let _echo_off = terminal.then(|| {
        eprint!("password for {name}: ");
        let _ = std::io::stderr().flush();
        EchoOff::new()
    });
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    if terminal {
        eprintln!();
    }
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    Ok(password)
}

/// The terminal's echo, off until dropped. (A dozen lines of termios rather than a crate.)
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> Self {
        // SAFETY: tcgetattr and tcsetattr on standard input, with a termios they filled.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut term) != 0 {
                return EchoOff(None);
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &term);
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = self.0 {
            // SAFETY: restoring the settings read in `new`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved);
            }
        }
    }
}
