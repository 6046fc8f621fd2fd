//! Writes a benchmark's section into BENCHMARKS.md, replacing the previous run's.

use std::path::PathBuf;

fn path() -> PathBuf {
    spillway_e2e::repo_root().join("BENCHMARKS.md")
}

/// Replaces the section `name` (between its markers) with `body`, appending it if absent.
pub fn write_section(name: &str, body: &str) -> anyhow::Result<()> {
    let path = path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let section = format!("{start}\n{}\n{end}", body.trim_end());
    let text = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{}{}", &text[..a], section, &text[b + end.len()..])
        }
        _ => format!("{}\n{}\n", text.trim_end(), section),
    };
    std::fs::write(&path, text)?;
    println!("{}", body.trim_end());
    println!("(written to {})", path.display());
    Ok(())
}

/// The machine the figures come from.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{date}, {cpus} CPUs ({model})")
}
