//! What `-o` means for each command, in that command's `--help`.
//!
//! `-o/--output` is one global flag (`Cli::output`), but a command's help has
//! to say what it prints: a table or one JSON object with which fields, or,
//! for `kubeconfig`, a file. A command declares its own `-o` with
//! [`output`]; clap then does not copy the global one into it, and the value
//! still lands in `Cli::output` because both arguments share the id
//! `output`.

/// The `-o/--output` flag of one command, described by `help`.
pub fn output(help: &'static str) -> clap::Arg {
    clap::Arg::new("output")
        .short('o')
        .long("output")
        .value_name("FORMAT")
        .action(clap::ArgAction::Set)
        .help(help)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use crate::Cli;

    /// The whole command tree, with global flags copied into every command
    /// as `--help` shows them.
    fn tree() -> clap::Command {
        let mut cmd = Cli::command();
        cmd.build();
        cmd
    }

    /// Every command below `cmd` (not clap's own `help`), with its path.
    fn walk<'a>(cmd: &'a clap::Command, path: &str, out: &mut Vec<(String, &'a clap::Command)>) {
        for sc in cmd.get_subcommands().filter(|sc| sc.get_name() != "help") {
            let p = format!("{path} {}", sc.get_name());
            out.push((p.clone(), sc));
            walk(sc, &p, out);
        }
    }

    fn commands(root: &clap::Command) -> Vec<(String, &clap::Command)> {
        let mut all = vec![("khctl".to_string(), root)];
        walk(root, "khctl", &mut all);
        all
    }

    #[test]
    fn every_command_flag_and_argument_has_help_text() {
        let root = tree();
        let mut missing = vec![];
        for (path, cmd) in commands(&root) {
            if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
                missing.push(format!("`{path}` has no about text"));
            }
            for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                let text = a.get_help().or(a.get_long_help()).map(|h| h.to_string());
                if text.is_none_or(|t| t.trim().is_empty()) {
                    let name = match (a.get_long(), a.get_short()) {
                        (Some(l), _) => format!("--{l}"),
                        (None, Some(s)) => format!("-{s}"),
                        (None, None) => a.get_id().to_string().to_uppercase(),
                    };
                    missing.push(format!("`{path}` {name} has no help text"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "document these with a /// comment or help = \"...\":\n{}",
            missing.join("\n")
        );
    }

    /// A command that prints something says what `-o` gives there; only a
    /// group of subcommands (which prints nothing itself) keeps the global
    /// text.
    #[test]
    fn every_command_says_what_its_output_flag_means() {
        let root = tree();
        let global = root
            .get_arguments()
            .find(|a| a.get_id() == "output")
            .and_then(|a| a.get_help())
            .map(|h| h.to_string())
            .expect("a global -o");
        let mut generic = vec![];
        for (path, cmd) in commands(&root).into_iter().skip(1) {
            if cmd.is_subcommand_required_set() {
                continue;
            }
            let help = cmd
                .get_arguments()
                .find(|a| a.get_id() == "output")
                .and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            if help == global {
                generic.push(path);
            }
        }
        assert!(
            generic.is_empty(),
            "give these commands their own -o text with #[command(arg = help::output(\"...\"))]:\n{}",
            generic.join("\n")
        );
    }

    /// A command's own `-o` still sets the one global value, before or
    /// after the command's name.
    #[test]
    fn output_reaches_the_global_value_wherever_it_is_given() {
        for args in [
            &["khctl", "nodes", "-o", "json"][..],
            &["khctl", "-o", "json", "nodes"],
            &["khctl", "rollout", "status", "-o", "json"],
            &["khctl", "rollout", "-f", "c.yaml", "--output", "json"],
            &[
                "khctl", "etcd", "replace", "--failed", "a", "--with", "b", "-o", "json",
            ],
            &["khctl", "token", "list", "-o", "json"],
            &["khctl", "kubeconfig", "-o", "json"],
            &[
                "khctl",
                "upgrade",
                "-f",
                "c.yaml",
                "--through",
                "-o",
                "json",
            ],
            &["khctl", "upgrade", "status", "--follow", "-o", "json"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.output.as_deref(), Some("json"), "{args:?}");
        }
        let cli = Cli::try_parse_from(["khctl", "nodes"]).unwrap();
        assert_eq!(cli.output, None);
    }
}
