//! `--help` groups the flags by what they configure: a node's own, then each provider's,
//! with the flags every provider shares under their own heading; the cluster flags
//! (`--kubeconfig`, `--context`) are on every command.

use clap::CommandFactory;

/// The flags listed under each heading of `command`'s long help, in order.
fn sections(command: &mut clap::Command) -> Vec<(String, String)> {
    let help = command.render_long_help().to_string();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            out.push((line.trim_end_matches(':').to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

#[test]
fn vk_node_help_groups_flags_by_provider() {
    let mut cli = spillway::Cli::command();
    let vk_node = cli
        .find_subcommand_mut("vk-node")
        .expect("a vk-node subcommand");
    let sections = sections(vk_node);
    let section = |name: &str| -> &str {
        sections
            .iter()
            .find(|(heading, _)| heading == name)
            .map(|(_, body)| body.as_str())
            .unwrap_or_else(|| panic!("no {name} heading in {sections:?}"))
    };
    assert!(section("AWS Fargate").contains("--subnets"));
    assert!(section("AWS Fargate").contains("--execution-role-arn"));
    assert!(section("Azure Container Instances").contains("--aci-subnet-ids"));
    assert!(section("Every provider").contains("--cluster-id"));
    assert!(!section("AWS Fargate").contains("--cluster-id"));
    assert!(section("Virtual node").contains("--node-name-prefix"));
    assert!(section("Mock provider").contains("--mock-"));
}

#[test]
fn every_command_takes_the_cluster_flags() {
    let mut cli = spillway::Cli::command();
    // Global flags reach the subcommands when the command is built, as when parsing.
    cli.build();
    // (`help` is clap's own subcommand.)
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        let names: Vec<&str> = sub.get_arguments().filter_map(|a| a.get_long()).collect();
        for flag in ["kubeconfig", "context"] {
            assert!(
                names.contains(&flag),
                "{} lacks --{flag}: {names:?}",
                sub.get_name()
            );
        }
    }
}
