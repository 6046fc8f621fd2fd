//! Runs a command under a pseudo-terminal (Python's `pty`, as the test bed has Python)
//! and plays steps at it: wait for text on the screen, type, resize the terminal (the
//! terminal's own TIOCSWINSZ, which sends SIGWINCH to the command). For `kubectl exec
//! -it`, which wants a real terminal.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

/// One thing done at the terminal, in order.
#[derive(Clone, Debug)]
pub enum Step {
    /// Wait until this text has appeared on the screen.
    WaitFor(String),
    /// Type these bytes (as UTF-8 text).
    Type(String),
    /// Resize the terminal to columns × rows.
    Resize(u16, u16),
    /// Read what comes for this many milliseconds.
    Sleep(u64),
}

const DRIVER: &str = r#"
import fcntl, json, os, pty, select, struct, sys, termios, time
cols, rows, steps = json.loads(sys.argv[1])
def size(fd, cols, rows):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
pid, fd = pty.fork()
if pid == 0:
    size(0, cols, rows)
    os.execv(sys.argv[2], sys.argv[2:])
seen, deadline = b"", time.time() + 30
def read(wait):
    global seen
    ready, _, _ = select.select([fd], [], [], wait)
    if not ready:
        return True
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        return False
    seen += chunk
    return bool(chunk)
for kind, value in steps:
    if kind == "wait":
        while value.encode() not in seen and time.time() < deadline:
            if not read(0.5):
                break
    elif kind == "type":
        os.write(fd, value.encode())
    elif kind == "resize":
        size(fd, value[0], value[1])
    elif kind == "sleep":
        until = time.time() + value / 1000
        while time.time() < until and read(0.1):
            pass
while time.time() < deadline and read(0.5):
    pass
_, status = os.waitpid(pid, os.WNOHANG)
if _ == 0:
    os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;

/// Runs `program args` in a terminal of `cols` × `rows` through `steps`, then until it
/// exits (at most 30 s in all, then it is killed): its exit code and the screen.
pub fn drive(
    program: &Path,
    args: &[&str],
    size: (u16, u16),
    steps: &[Step],
) -> anyhow::Result<(Option<i32>, String)> {
    drive_with_env(program, args, size, &[], steps)
}

/// [`drive`] with `env` added to the program's environment.
pub fn drive_with_env(
    program: &Path,
    args: &[&str],
    (cols, rows): (u16, u16),
    env: &[(&str, &str)],
    steps: &[Step],
) -> anyhow::Result<(Option<i32>, String)> {
    let steps: Vec<Value> = steps
        .iter()
        .map(|step| match step {
            Step::WaitFor(text) => json!(["wait", text]),
            Step::Type(text) => json!(["type", text]),
            Step::Resize(cols, rows) => json!(["resize", [cols, rows]]),
            Step::Sleep(ms) => json!(["sleep", ms]),
        })
        .collect();
    let output = Command::new("python3")
        .args(["-c", DRIVER])
        .arg(json!([cols, rows, steps]).to_string())
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .output()?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}
