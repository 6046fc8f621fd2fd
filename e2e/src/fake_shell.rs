//! The shell the test bed's fakes of ACI exec and ECS Exec run: lines of input (ended by
//! CR or LF), `echo …`, `stty size` (rows and columns of the terminal the session was
//! given), `exit`; Ctrl-D ends it too; anything else is "not found".

/// One shell's state.
#[derive(Debug)]
pub struct LineShell {
    pending: Vec<u8>,
    /// Terminal rows.
    pub rows: u64,
    /// Terminal columns.
    pub cols: u64,
}

/// What the shell did with some input.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Output to send, in order.
    pub output: Vec<String>,
    /// The shell ended (`exit` or Ctrl-D).
    pub ended: bool,
}

impl LineShell {
    /// A shell in a terminal of `rows` × `cols`.
    pub fn new(rows: u64, cols: u64) -> Self {
        Self {
            pending: Vec::new(),
            rows,
            cols,
        }
    }

    /// Takes `bytes` of input.
    pub fn feed(&mut self, bytes: &[u8]) -> Fed {
        let mut fed = Fed::default();
        for &byte in bytes {
            if byte == 0x04 {
                fed.ended = true;
                return fed;
            }
            if byte != b'\n' && byte != b'\r' {
                self.pending.push(byte);
                continue;
            }
            let line = String::from_utf8_lossy(&self.pending).trim().to_owned();
            self.pending.clear();
            match line.as_str() {
                "" => {}
                "exit" => {
                    fed.ended = true;
                    return fed;
                }
                "stty size" => fed.output.push(format!("{} {}\n", self.rows, self.cols)),
                _ => fed.output.push(match line.strip_prefix("echo ") {
                    Some(rest) => format!("{rest}\n"),
                    None => format!("sh: {line}: not found\n"),
                }),
            }
        }
        fed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_run_as_they_end_and_exit_or_ctrl_d_end_the_shell() {
        let mut shell = LineShell::new(24, 80);
        assert_eq!(shell.feed(b"ec").output, Vec::<String>::new());
        assert_eq!(
            shell.feed(b"ho hi\rstty size\n").output,
            ["hi\n", "24 80\n"]
        );
        assert_eq!(shell.feed(b"nope\n").output, ["sh: nope: not found\n"]);
        assert!(shell.feed(b"exit\n").ended);
        assert!(LineShell::new(1, 1).feed(b"\x04").ended);
    }
}
