//! Running short-lived commands (kubectl, psql, the hostplane CLI) and capturing what a user
//! would see.

use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};

/// What a finished command printed.
#[derive(Clone, Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout followed by stderr, what a terminal would show.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// stdout; panics with both streams when the command failed. `what` names the action.
    #[track_caller]
    pub fn expect_success(self, what: &str) -> String {
        assert!(
            self.success(),
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self.stdout
    }
}

/// Runs `command` to completion, feeding it `stdin` if given (stdin is closed otherwise), and
/// captures stdout and stderr. Panics only when the program cannot be started.
pub fn run_command(mut command: Command, stdin: Option<&str>) -> CommandOutput {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", command.get_program()));
    let input = child.stdin.take();
    let output = std::thread::scope(|scope| {
        // Written from another thread so a command that prints before it has read all of its
        // input cannot deadlock against us.
        if let (Some(mut pipe), Some(text)) = (input, stdin) {
            scope.spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .unwrap_or_else(|e| panic!("waiting for {:?}: {e}", command.get_program()));
    CommandOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
