//! The commands shown in the README and in `docs/`, as one script per file for the
//! doc-command test: every ```sh block runs, in order, in one bash session.
//!
//! Markers, as HTML comments so they do not show when the Markdown renders:
//! - `<!-- doc-test: skip REASON -->` right before a block: not run, and REASON is
//!   reported (kept for commands CI cannot run, e.g. `make test` itself);
//! - `<!-- doc-test: background until CHECK -->` right before a block: it runs in the
//!   background (a long-running process such as `spillway run`) and the script goes on
//!   once CHECK succeeds (within 60 s); it is stopped when the script ends;
//! - `<!-- doc-test-setup` … `-->`: commands that run at that point but are not shown
//!   (e.g. a release the page assumes is installed).

/// One file's commands.
#[derive(Debug, Default, PartialEq)]
pub struct DocScript {
    /// The bash script that runs them.
    pub script: String,
    /// Blocks not run, as "line N: reason".
    pub skipped: Vec<String>,
    /// How many blocks run.
    pub blocks: usize,
}

enum Marker {
    None,
    Skip(String),
    Background(String),
}

/// Builds the script for the Markdown `text` of `file`.
pub fn script_for(file: &str, text: &str) -> Result<DocScript, String> {
    let mut out = DocScript {
        script: String::from(
            "set -euo pipefail\nbackground=()\n\
             trap 'for p in \"${background[@]}\"; do kill \"$p\" 2>/dev/null || true; done; \
             for p in \"${background[@]}\"; do wait \"$p\" 2>/dev/null || true; done' EXIT\n",
        ),
        ..DocScript::default()
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut marker = Marker::None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        let number = i + 1;
        if let Some(rest) = line.trim().strip_prefix("<!-- doc-test: skip") {
            let reason = rest.trim_end_matches("-->").trim();
            if reason.is_empty() {
                return Err(format!("{file}:{number}: a skip needs a reason"));
            }
            marker = Marker::Skip(reason.to_owned());
        } else if let Some(rest) = line.trim().strip_prefix("<!-- doc-test: background until") {
            let check = rest.trim_end_matches("-->").trim();
            if check.is_empty() {
                return Err(format!("{file}:{number}: background needs a check"));
            }
            marker = Marker::Background(check.to_owned());
        } else if line.trim() == "<!-- doc-test-setup" {
            let mut body = String::new();
            i += 1;
            while i < lines.len() && lines[i].trim() != "-->" {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            if i == lines.len() {
                return Err(format!("{file}:{number}: unterminated doc-test-setup"));
            }
            out.script
                .push_str(&format!("echo '== {file}:{number} (setup)' >&2\n{body}"));
        } else if line.trim_start().starts_with("```") {
            let info = line.trim_start().trim_start_matches('`').trim();
            let mut body = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            if i == lines.len() {
                return Err(format!("{file}:{number}: unterminated code block"));
            }
            if info == "sh" || info == "bash" || info == "shell" {
                match std::mem::replace(&mut marker, Marker::None) {
                    Marker::Skip(reason) => out.skipped.push(format!("{file}:{number}: {reason}")),
                    Marker::Background(check) => {
                        out.blocks += 1;
                        out.script.push_str(&format!(
                            "echo '== {file}:{number} (background)' >&2\n\
                             ( {body} ) >&2 &\nbackground+=($!)\n\
                             for _ in $(seq 120); do ( {check} ) >/dev/null 2>&1 && break; \
                             kill -0 \"${{background[-1]}}\" 2>/dev/null || {{ echo '{file}:{number}: the background command exited' >&2; exit 1; }}; \
                             sleep 0.5; done\n( {check} ) >/dev/null 2>&1 || {{ echo '{file}:{number}: not ready: {check_quoted}' >&2; exit 1; }}\n",
                            check_quoted = check.replace('\'', "")
                        ));
                    }
                    Marker::None => {
                        out.blocks += 1;
                        out.script
                            .push_str(&format!("echo '== {file}:{number}' >&2\n{body}"));
                    }
                }
            } else if !matches!(marker, Marker::None) {
                return Err(format!(
                    "{file}:{number}: a doc-test marker before a ```{info} block"
                ));
            }
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::script_for;

    #[test]
    fn blocks_run_in_order_with_their_markers() {
        let text = "# T\n```sh\necho one\n```\n```yaml\nkey: v\n```\n<!-- doc-test: skip it is make test -->\n```sh\nmake test\n```\n<!-- doc-test-setup\necho hidden\n-->\n<!-- doc-test: background until curl -sf http://x -->\n```sh\nserve\n```\n";
        let s = script_for("T.md", text).unwrap();
        assert_eq!(s.blocks, 2);
        assert_eq!(s.skipped, ["T.md:9: it is make test"]);
        let one = s.script.find("echo one").unwrap();
        let hidden = s.script.find("echo hidden").unwrap();
        let serve = s.script.find("( serve\n ) >&2 &").unwrap();
        assert!(one < hidden && hidden < serve, "{}", s.script);
        assert!(!s.script.contains("make test"));
        assert!(!s.script.contains("key: v"));
    }

    #[test]
    fn markers_without_reason_or_block_are_refused() {
        assert!(script_for("T.md", "<!-- doc-test: skip -->\n```sh\nx\n```\n").is_err());
        assert!(script_for("T.md", "<!-- doc-test: skip why -->\n```json\n{}\n```\n").is_err());
        assert!(script_for("T.md", "```sh\nnever closed\n").is_err());
    }
}
