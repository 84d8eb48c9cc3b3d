//! The configuration file of a subcommand (`ferrokube server --config FILE`, by default
//! `/etc/ferrokube/config.yaml` when it exists), then every `FILE.d/*.yaml` in name order: a
//! YAML map whose keys are the subcommand's long flags (`data-dir: /srv/fk`,
//! `tls-san: [a, b]`, `disable-agent: true`). A later file replaces a key of an earlier one,
//! or appends to a repeatable flag when the key ends in `+` (`tls-san+: [c]`).
//!
//! The keys become command-line arguments before parsing, so every flag's own checks apply.
//! Precedence: a flag on the command line, then its environment variable, then the files,
//! then the default. A key that is no flag of the subcommand is refused with its name and
//! file.

use clap::{Arg, ArgAction, Command};
use serde_yaml::Value;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where the server's configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/ferrokube/config.yaml";

/// Why the configuration could not be used, phrased for the person who wrote it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: unknown key {key:?}: `ferrokube {command}` has no flag --{key}")]
    UnknownKey { path: PathBuf, key: String, command: String },
}

/// One flag's value as the files give it.
struct Setting {
    key: String,
    values: Vec<String>,
}

/// `args` (the whole command line, program name first) with the settings of `sub`'s
/// configuration files inserted after the subcommand's name. `cmd` is the program's clap
/// command; `sub` must have a `config` argument (`--config`).
pub fn expand(args: Vec<OsString>, cmd: &Command, default: &Path) -> Result<Vec<OsString>, ConfigError> {
    let Some(name) = args.get(1).and_then(|a| a.to_str()).map(String::from) else { return Ok(args) };
    let Some(sub) = cmd.find_subcommand(&name) else { return Ok(args) };
    if sub.get_arguments().all(|a| a.get_id() != "config") {
        return Ok(args);
    }
    let given = given_flags(&args[2..], sub);
    let path = match given.config.clone() {
        Some(p) => Some(p),
        None => std::env::var_os("FERROKUBE_CONFIG_FILE").map(PathBuf::from).or_else(|| default.exists().then(|| default.to_path_buf())),
    };
    let Some(path) = path else { return Ok(args) };
    let mut settings: Vec<Setting> = Vec::new();
    let mut files = vec![path.clone()];
    files.extend(dropins(&path)?);
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Read { path: file.clone(), reason: e.to_string() })?;
        merge(&mut settings, parse(file, &text, sub, &name)?);
    }
    let mut extra: Vec<OsString> = Vec::new();
    for s in settings {
        let Some(arg) = flag(sub, &s.key) else { continue };
        if given.flags.iter().any(|f| f == arg.get_id().as_str()) {
            continue;
        }
        if arg.get_env().is_some_and(|env| std::env::var_os(env).is_some()) {
            continue;
        }
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            // Validated to be a boolean by `parse`.
            if s.values.first().map(String::as_str) == Some("true") {
                extra.push(format!("--{}", s.key).into());
            }
            continue;
        }
        for v in s.values {
            extra.push(format!("--{}={v}", s.key).into());
        }
    }
    let mut out = args;
    let tail = out.split_off(2);
    out.extend(extra);
    out.extend(tail);
    Ok(out)
}

/// The `*.yaml` files of `<path>.d/`, in name order (none when there is no such directory).
fn dropins(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut dir = path.as_os_str().to_owned();
    dir.push(".d");
    let dir = PathBuf::from(dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConfigError::Read { path: dir, reason: e.to_string() }),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The long flag `key` names in `sub` (`config` itself is no key).
fn flag<'a>(sub: &'a Command, key: &str) -> Option<&'a Arg> {
    sub.get_arguments().find(|a| a.get_long() == Some(key) && a.get_id() != "config" && a.get_id() != "help")
}

/// The settings of one file, checked against `sub`'s flags.
fn parse(path: &Path, text: &str, sub: &Command, command: &str) -> Result<Vec<(Setting, bool)>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { path: path.to_path_buf(), reason };
    let doc: Value = serde_yaml::from_str(text).map_err(|e| invalid(format!("not valid YAML: {e}")))?;
    let map = match doc {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(m) => m,
        _ => return Err(invalid("expected a map of flag names to values".into())),
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let Some(raw) = k.as_str() else { return Err(invalid(format!("key {} is not a string", scalar(&k).unwrap_or_default()))) };
        let (key, append) = match raw.strip_suffix('+') {
            Some(k) => (k.to_string(), true),
            None => (raw.to_string(), false),
        };
        let Some(arg) = flag(sub, &key) else {
            return Err(ConfigError::UnknownKey { path: path.to_path_buf(), key: raw.to_string(), command: command.to_string() });
        };
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        let values = match &v {
            Value::Sequence(items) if repeatable => items
                .iter()
                .map(|i| scalar(i).ok_or_else(|| invalid(format!("{key}: every item must be a string, number or boolean"))))
                .collect::<Result<Vec<_>, _>>()?,
            Value::Sequence(_) => return Err(invalid(format!("{key}: takes one value, not a list"))),
            other => vec![scalar(other).ok_or_else(|| invalid(format!("{key}: expected a string, number or boolean")))?],
        };
        if append && !repeatable {
            return Err(invalid(format!("{raw}: only repeatable flags can be appended to")));
        }
        if matches!(arg.get_action(), ArgAction::SetTrue) && !matches!(v, Value::Bool(_)) {
            return Err(invalid(format!("{key}: expected true or false")));
        }
        out.push((Setting { key, values }, append));
    }
    Ok(out)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Adds one file's settings: a key replaces an earlier file's, unless it appends (`key+`).
fn merge(into: &mut Vec<Setting>, file: Vec<(Setting, bool)>) {
    for (s, append) in file {
        match into.iter_mut().find(|x| x.key == s.key) {
            Some(x) if append => x.values.extend(s.values),
            Some(x) => x.values = s.values,
            None => into.push(s),
        }
    }
}

/// What the command line itself sets.
struct Given {
    config: Option<PathBuf>,
    /// Ids of the flags present.
    flags: Vec<String>,
}

fn given_flags(args: &[OsString], sub: &Command) -> Given {
    let mut given = Given { config: None, flags: Vec::new() };
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned()).peekable();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        let Some(long) = a.strip_prefix("--") else { continue };
        let (name, inline) = match long.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (long.to_string(), None),
        };
        if name == "config" {
            given.config = inline.or_else(|| it.next()).map(PathBuf::from);
            continue;
        }
        if let Some(arg) = sub.get_arguments().find(|x| x.get_long() == Some(name.as_str())) {
            given.flags.push(arg.get_id().to_string());
        }
    }
    given
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: Sub,
    }
    #[derive(Subcommand, Debug)]
    enum Sub {
        Server {
            #[arg(long)]
            config: Option<PathBuf>,
            #[arg(long, default_value = "/var/lib/x")]
            data_dir: PathBuf,
            #[arg(long, default_value_t = 6443)]
            port: u16,
            #[arg(long = "tls-san")]
            tls_san: Vec<String>,
            #[arg(long)]
            disable_agent: bool,
        },
    }

    fn run(files: &[(&str, &str)], cli: &[&str]) -> Result<Sub, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("c.yaml.d")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let cfg = dir.path().join("c.yaml");
        let mut args: Vec<OsString> = vec!["fk".into(), "server".into(), "--config".into(), cfg.into()];
        args.extend(cli.iter().map(OsString::from));
        let args = expand(args, &Cli::command(), Path::new("/nonexistent")).map_err(|e| e.to_string())?;
        Cli::try_parse_from(args).map(|c| c.cmd).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_become_flags_and_the_command_line_wins() {
        let Sub::Server { data_dir, port, tls_san, disable_agent, .. } =
            run(&[("c.yaml", "data-dir: /srv/fk\nport: 7443\ntls-san: [a, b]\ndisable-agent: true\n")], &["--port", "8443"]).unwrap();
        assert_eq!((data_dir, port, tls_san, disable_agent), (PathBuf::from("/srv/fk"), 8443, vec!["a".to_string(), "b".to_string()], true));
    }

    #[test]
    fn drop_ins_replace_or_append_in_name_order() {
        let Sub::Server { port, tls_san, .. } = run(
            &[("c.yaml", "port: 1\ntls-san: [a]\n"), ("c.yaml.d/10-x.yaml", "port: 2\ntls-san+: [b]\n"), ("c.yaml.d/20-y.yaml", "port: 3\n"), ("c.yaml.d/30-z.txt", "port: 9\n")],
            &[],
        )
        .unwrap();
        assert_eq!((port, tls_san), (3, vec!["a".to_string(), "b".to_string()]));
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name() {
        let e = run(&[("c.yaml", "port: 1\ndata-dri: /x\n")], &[]).unwrap_err();
        assert!(e.contains("unknown key \"data-dri\"") && e.contains("c.yaml"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_clearly() {
        assert!(run(&[("c.yaml", "port: [1, 2]\n")], &[]).unwrap_err().contains("port: takes one value"));
        assert!(run(&[("c.yaml", "disable-agent: yes please\n")], &[]).unwrap_err().contains("disable-agent: expected true or false"));
        assert!(run(&[("c.yaml", "- a\n- b\n")], &[]).unwrap_err().contains("expected a map"));
        assert!(run(&[("c.yaml", "port: notanumber\n")], &[]).unwrap_err().contains("notanumber"), "clap's own check applies");
        let missing = expand(vec!["fk".into(), "server".into(), "--config=/nonexistent/c.yaml".into()], &Cli::command(), Path::new("/x"));
        assert!(missing.unwrap_err().to_string().contains("/nonexistent/c.yaml"));
    }

    #[test]
    fn false_leaves_a_switch_off_and_an_empty_file_is_nothing() {
        let Sub::Server { disable_agent, .. } = run(&[("c.yaml", "disable-agent: false\n")], &[]).unwrap();
        assert!(!disable_agent);
        let Sub::Server { port, .. } = run(&[("c.yaml", "")], &[]).unwrap();
        assert_eq!(port, 6443);
    }
}
