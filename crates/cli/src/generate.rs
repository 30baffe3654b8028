//! Shell completions and man pages, generated from the same clap
//! definitions the binary parses with.

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;

#[derive(Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn completions(shell: Shell, cmd: &mut clap::Command) -> ExitCode {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, cmd, "overvisor", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `overvisor.1` on stdout; with a directory, one page per command
/// (`overvisor-vm-start.1`…) written there.
pub fn man(cmd: clap::Command, dir: Option<&Path>) -> ExitCode {
    let result = match dir {
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
        Some(dir) => std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(cmd, dir)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
