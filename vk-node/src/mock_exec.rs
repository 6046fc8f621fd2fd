//! What `kubectl exec` runs in a mock pod: a handful of built-in commands, enough to see
//! output, stdin, exit codes and terminal resizes travel the whole way.
//!
//! | command | does |
//! |---|---|
//! | `echo ARG…` | prints its arguments |
//! | `echo-stderr ARG…` | prints them on standard error |
//! | `cat` | copies stdin to stdout until stdin ends |
//! | `exit N`, `sh -c "exit N"` | exits with N |
//! | `tty-size` | prints `COLSxROWS` for each terminal size it is told, until stdin ends (or Ctrl-D at a terminal) |
//! | anything else | "command not found" on standard error, exit 127 |
//!
//! Attaching copies stdin to stdout after a first line `attached to <container>`.

use crate::provider::{ExecCommand, SessionEnd, SessionIo};

/// Runs `command` against `io`.
pub async fn run(command: &ExecCommand, mut io: SessionIo) -> SessionEnd {
    let argv: Vec<&str> = command.argv.iter().map(String::as_str).collect();
    match argv.as_slice() {
        ["echo", rest @ ..] => {
            let _ = io.stdout.send(format!("{}\n", rest.join(" ")).into()).await;
            SessionEnd::Exited(0)
        }
        ["echo-stderr", rest @ ..] => {
            let _ = io.stderr.send(format!("{}\n", rest.join(" ")).into()).await;
            SessionEnd::Exited(0)
        }
        ["cat"] => {
            copy_stdin(&mut io).await;
            SessionEnd::Exited(0)
        }
        ["exit", code] => exit_with(code, &io).await,
        ["sh", "-c", script] if script.starts_with("exit ") => {
            exit_with(&script["exit ".len()..], &io).await
        }
        ["tty-size"] => {
            loop {
                tokio::select! {
                    size = io.resize.recv() => match size {
                        Some(size) => {
                            let line = format!("{}x{}\n", size.width, size.height);
                            if io.stdout.send(line.into()).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    // Its end, or Ctrl-D typed at a terminal (which sends the byte).
                    data = io.stdin.recv() => match data {
                        Some(data) if !(command.tty && data.contains(&0x04)) => {}
                        _ => break,
                    },
                }
            }
            SessionEnd::Exited(0)
        }
        [name, ..] => {
            let _ = io
                .stderr
                .send(format!("mock: {name}: command not found\n").into())
                .await;
            SessionEnd::Exited(127)
        }
        [] => SessionEnd::Exited(127),
    }
}

/// Attaches to `container`'s main process.
pub async fn attach(container: &str, mut io: SessionIo) -> SessionEnd {
    let _ = io
        .stdout
        .send(format!("attached to {container}\n").into())
        .await;
    copy_stdin(&mut io).await;
    SessionEnd::Exited(0)
}

async fn copy_stdin(io: &mut SessionIo) {
    while let Some(data) = io.stdin.recv().await {
        if io.stdout.send(data).await.is_err() {
            break;
        }
    }
}

async fn exit_with(code: &str, io: &SessionIo) -> SessionEnd {
    match code.trim().parse::<i32>() {
        Ok(code) => SessionEnd::Exited(code),
        Err(_) => {
            let _ = io
                .stderr
                .send(format!("mock: exit: {code}: numeric argument required\n").into())
                .await;
            SessionEnd::Exited(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::TerminalSize;
    use tokio::sync::mpsc;

    struct Caller {
        stdin: Option<mpsc::Sender<Vec<u8>>>,
        resize: mpsc::Sender<TerminalSize>,
        stdout: mpsc::Receiver<Vec<u8>>,
        stderr: mpsc::Receiver<Vec<u8>>,
    }

    fn session() -> (SessionIo, Caller) {
        let (stdin_tx, stdin) = mpsc::channel(8);
        let (resize_tx, resize) = mpsc::channel(8);
        let (stdout, stdout_rx) = mpsc::channel(8);
        let (stderr, stderr_rx) = mpsc::channel(8);
        (
            SessionIo {
                stdin,
                resize,
                stdout,
                stderr,
            },
            Caller {
                stdin: Some(stdin_tx),
                resize: resize_tx,
                stdout: stdout_rx,
                stderr: stderr_rx,
            },
        )
    }

    fn command(argv: &[&str]) -> ExecCommand {
        ExecCommand {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            stdin: true,
            tty: false,
        }
    }

    async fn all(mut rx: mpsc::Receiver<Vec<u8>>) -> String {
        let mut out = Vec::new();
        while let Some(data) = rx.recv().await {
            out.extend(data);
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn commands_print_read_stdin_and_exit_with_their_codes() {
        let (io, caller) = session();
        assert_eq!(
            run(&command(&["echo", "a", "b"]), io).await,
            SessionEnd::Exited(0)
        );
        assert_eq!(all(caller.stdout).await, "a b\n");

        let (io, mut caller) = session();
        let stdin = caller.stdin.take().unwrap();
        stdin.send(b"hello\n".to_vec()).await.unwrap();
        drop(stdin);
        assert_eq!(run(&command(&["cat"]), io).await, SessionEnd::Exited(0));
        assert_eq!(all(caller.stdout).await, "hello\n");

        let (io, _caller) = session();
        assert_eq!(
            run(&command(&["sh", "-c", "exit 3"]), io).await,
            SessionEnd::Exited(3)
        );
        let (io, caller) = session();
        assert_eq!(run(&command(&["nope"]), io).await, SessionEnd::Exited(127));
        assert!(all(caller.stderr).await.contains("nope: command not found"));
    }

    #[tokio::test]
    async fn tty_size_reports_each_resize_until_stdin_ends() {
        let (io, mut caller) = session();
        caller
            .resize
            .send(TerminalSize {
                width: 80,
                height: 24,
            })
            .await
            .unwrap();
        let task = tokio::spawn(async move { run(&command(&["tty-size"]), io).await });
        assert_eq!(caller.stdout.recv().await.unwrap(), b"80x24\n");
        caller
            .resize
            .send(TerminalSize {
                width: 100,
                height: 30,
            })
            .await
            .unwrap();
        assert_eq!(caller.stdout.recv().await.unwrap(), b"100x30\n");
        drop(caller.stdin.take());
        assert_eq!(task.await.unwrap(), SessionEnd::Exited(0));
    }
}
