//! The experiment registry's entry type. The registry itself is [`super::REGISTRY`]: the one list
//! the command line, `equirun sweep` and `equirun report` iterate (docs/architecture.md, "Adding
//! things").

use crate::tools::table::Obs;
use anyhow::Result;
use serde_json::Value;

/// A top-level subcommand an experiment owns.
#[derive(Clone, Copy)]
pub struct Command {
    pub name: &'static str,
    /// The one-line description in `equirun --help`.
    pub about: &'static str,
    /// Adds its arguments: `<Args as clap::Args>::augment_args` (or a subcommand enum's
    /// `augment_subcommands`, see [`subcommands`]).
    pub args: fn(clap::Command) -> clap::Command,
    /// Runs it on its parsed arguments ([`run_with`]); returns the process exit code.
    pub run: fn(&clap::ArgMatches) -> Result<i32>,
}

impl Command {
    /// The clap definition.
    pub fn build(&self) -> clap::Command {
        (self.args)(clap::Command::new(self.name)).about(self.about)
    }
}

/// `args` of a command made of subcommands (`scan pretrain`, `regard score`, …).
pub fn subcommands<S: clap::Subcommand>(c: clap::Command) -> clap::Command {
    S::augment_subcommands(c)
        .subcommand_required(true)
        .arg_required_else_help(true)
}

/// Parses `A` from the matches and runs `f` on it: exit code 0 when it succeeds.
pub fn run_with<A: clap::FromArgMatches, T>(
    m: &clap::ArgMatches,
    f: fn(&A) -> Result<T>,
) -> Result<i32> {
    f(&A::from_arg_matches(m)?)?;
    Ok(0)
}

/// The flags of one sweep run: `flag("method")` is the value of `--method` if the run sets it.
pub type Flags<'a> = &'a dyn Fn(&str) -> Result<Option<String>>;

/// One kind of result file.
pub struct Experiment {
    /// The `experiment` field of its result JSONs and its folder under `--out`.
    pub name: &'static str,
    /// The subcommand words that write it (`["scan", "finetune"]`); empty when it is written as
    /// a by-product of another experiment.
    pub words: &'static [&'static str],
    /// The top-level subcommand, for the experiment that owns it (`None` for a sub-subcommand or a
    /// by-product).
    pub command: Option<Command>,
    /// The run folders one invocation with `--run-name NAME` writes (sweeps look there).
    pub run_folders: fn(Flags, &str) -> Result<Vec<String>>,
    /// What `equirun report` tabulates from one result JSON (`None`: not tabulated).
    pub extract: Option<fn(&Value, &str) -> Vec<Obs>>,
}

/// `run_folders` of an experiment that writes exactly the folder `--run-name` names.
pub fn one_folder(_: Flags, run_name: &str) -> Result<Vec<String>> {
    Ok(vec![run_name.to_string()])
}

/// The experiment whose results the subcommand `words` writes.
pub fn by_words(words: &[&str]) -> Option<&'static Experiment> {
    super::REGISTRY
        .iter()
        .find(|e| !e.words.is_empty() && e.words == words)
}

/// The experiment subcommand called `name`.
pub fn command(name: &str) -> Option<Command> {
    super::REGISTRY
        .iter()
        .filter_map(|e| e.command)
        .find(|c| c.name == name)
}

/// Every experiment subcommand's clap definition.
pub fn commands() -> Vec<clap::Command> {
    super::REGISTRY
        .iter()
        .filter_map(|e| e.command.map(|c| c.build()))
        .collect()
}
