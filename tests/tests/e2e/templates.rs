//! No value ever becomes code: values drawn from everything the API accepts, in every
//! placeholder position of a corpus of template shapes, either get the template
//! refused when the configuration loads, or arrive byte for byte in a command that
//! really runs on a test host, under `sh` (dash) and under `bash`, with nothing else
//! run (a canary file the values try to create never appears).

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use vesemir_core::config::{Shell, SshConfig};
use vesemir_core::template::{ShellTemplate, Values};
use vesemir_tests::{Fleet, ScratchDir};
use vesemir_worker::executor::host_argv;
use vesemir_worker::executor::native::remote_command_line;

/// A template, and what it prints for a value `v` when it is accepted: `None` when
/// it must be refused at load.
struct Shape {
    template: &'static str,
    prints: Option<fn(&str) -> String>,
}

const fn accepted(template: &'static str, prints: fn(&str) -> String) -> Shape {
    Shape { template, prints: Some(prints) }
}

const fn refused(template: &'static str) -> Shape {
    Shape { template, prints: None }
}

fn same(v: &str) -> String {
    v.to_owned()
}

fn shapes() -> Vec<Shape> {
    vec![
        accepted("printf %s {{vars.v}}", same),
        accepted("printf %s x{{vars.v}}y", |v| format!("x{v}y")),
        accepted("printf %s {{vars.v}}{{vars.v}}", |v| format!("{v}{v}")),
        accepted("printf %s \"a {{vars.v}} b\"", |v| format!("a {v} b")),
        accepted("printf %s \"$(printf %s {{vars.v}})\"", |v| v.trim_end_matches('\n').to_owned()),
        accepted("printf %s \"$(printf %s \"<{{vars.v}}>\")\"", |v| format!("<{v}>")),
        accepted("cat <<EOF\n{{vars.v}}\nEOF", |v| format!("{v}\n")),
        accepted("cat <<-EOF\n\tx {{vars.v}} y\n\tEOF", |v| format!("x {v} y\n")),
        accepted("X={{vars.v}}; printf %s \"$X\"", same),
        accepted("X=\"{{vars.v}}\" && export X && sh -c 'printf %s \"$X\"'", same),
        accepted("sh -c 'printf %s \"$1\"' sh {{vars.v}}", same),
        accepted("printf %s {{vars.v}} | cat", same),
        accepted("case {{vars.v}} in *) printf %s {{vars.v}};; esac", same),
        accepted("for a in {{vars.v}}; do printf %s \"$a\"; done", same),
        accepted("printf %s {{vars.v}} > \"$HOME/.vesemir-out\" && cat \"$HOME/.vesemir-out\"", same),
        accepted("if [ -n {{vars.v}} ]; then printf %s {{vars.v}}; else printf %s {{vars.v}}; fi", same),
        refused("printf %s '{{vars.v}}'"),
        refused("printf %s x\\{{vars.v}}"),
        refused("printf %s \"x\\{{vars.v}}\""),
        refused("printf %s ${{vars.v}}"),
        refused("printf %s $'{{vars.v}}'"),
        refused("printf %s `printf %s {{vars.v}}`"),
        refused("printf %s \"${X:-{{vars.v}}}\""),
        refused("printf %s $(( {{vars.v}} ))"),
        refused("cat <<'EOF'\n{{vars.v}}\nEOF"),
        refused("cat <<EOF\n$(printf %s {{vars.v}})\nEOF"),
        refused("eval printf %s {{vars.v}}"),
        refused("sh -c \"printf %s {{vars.v}}\""),
        refused("printf %s {{vars.v}} | sh"),
        refused("[[ {{vars.v}} == x ]]"),
        refused("{{vars.v}}"),
        refused("true # {{vars.v}}"),
    ]
}

/// Text that tries to break out of every kind of quoting and run the canary.
fn fragments(canary: &str) -> Vec<String> {
    let touch = format!("touch {canary}");
    [
        "'",
        "\"",
        "\\",
        "$",
        "`",
        "\n",
        "EOF\n",
        "\nEOF\n",
        "*",
        "~",
        "-e",
        "%s",
        "${IFS}",
        "'\\''",
        "\\'",
        "$'",
        "}}",
        "{{vars.v}}",
        "\u{0}",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("$({touch})"),
        format!("`{touch}`"),
        format!(";{touch};"),
        format!("';{touch};'"),
        format!("\";{touch};\""),
        format!("\\';{touch};#"),
        format!("a[$({touch})]"),
        format!("\n{touch}\n"),
        format!("$(IFS=_;cmd=touch_{canary};$cmd)"),
    ])
    .filter(|s| !s.contains('\0'))
    .collect()
}

/// Values as the API accepts them: up to 4096 bytes of any Unicode but NUL, biased
/// towards the fragments above.
fn value_strategy(canary: &str) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        2 => any::<char>().prop_filter("no NUL", |c| *c != '\0').prop_map(String::from),
        1 => "[ -~]{1,8}",
        2 => proptest::sample::select(fragments(canary)),
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|pieces| {
        let mut value = pieces.concat();
        while value.len() > 4096 {
            value.pop();
        }
        value
    })
}

#[test]
fn no_value_ever_runs_as_code_on_a_real_host_under_sh_and_bash() -> anyhow::Result<()> {
    let shapes = shapes();
    let operator = BTreeMap::new();
    // Refusals happen at load, without any value.
    let mut checked = Vec::new();
    for shape in &shapes {
        match (ShellTemplate::parse(shape.template, &operator), shape.prints) {
            (Ok(template), Some(prints)) => checked.push((shape.template, template, prints)),
            (Err(_), None) => {}
            (Ok(_), None) => anyhow::bail!("{:?} was accepted; it must be refused at load", shape.template),
            (Err(e), Some(_)) => anyhow::bail!("{:?} was refused: {e}", shape.template),
        }
    }

    let fleet = Fleet::up(1)?;
    let (host, address) = fleet.hosts[0].clone();
    let control = ScratchDir::new("vt")?;
    let canary = format!("/tmp/vesemir-canary-{}", uuid::Uuid::new_v4().simple());
    let ssh = SshConfig {
        user: "deploy".to_owned(),
        private_key: fleet.key(),
        known_hosts: fleet.known_hosts(),
        port: 22,
        connect_timeout_seconds: 5,
        keepalive_seconds: 5,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let session = runtime.block_on(vesemir_worker::ssh::connect(&ssh, &address, control.path()))?;
    let lock = format!("/tmp/vesemir-templates-{}.lock", uuid::Uuid::new_v4().simple());

    let mut runner = TestRunner::new(ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() });
    let outcome = runner.run(&value_strategy(&canary), |value| {
        let values = Values::from([("vars.v".to_owned(), value.clone())]);
        for (text, template, prints) in &checked {
            let command = template.render(&values).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for shell in [Shell::Sh, Shell::Bash] {
                let line = remote_command_line(&host_argv(&lock, 10, shell, &command));
                let output = runtime
                    .block_on(session.raw_command(&line).output())
                    .map_err(|e| TestCaseError::fail(format!("ssh: {e}")))?;
                let (said, expected) = (String::from_utf8_lossy(&output.stdout).into_owned(), prints(&value));
                prop_assert_eq!(
                    said,
                    expected,
                    "{:?} under {} (stderr: {})",
                    text,
                    shell.program(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        prop_assert!(!std::path::Path::new(&canary).exists(), "the canary was created");
        Ok(())
    });
    runtime.block_on(session.close())?;
    // The VMs share the machine's /tmp; the host's own view is asked too.
    let on_host = fleet.exec(&host, &["sh", "-c", &format!("test -e {canary} && echo created || true")])?;
    anyhow::ensure!(!on_host.contains("created"), "the canary was created on {host}");
    outcome.map_err(|e| anyhow::anyhow!("{e}"))
}

#[test]
fn a_template_that_could_interpret_a_value_is_refused_when_the_configuration_loads() -> anyhow::Result<()> {
    let config = |install: &str| {
        format!(
            "[services.web]\nvars = {{ install_command = {install:?}, restart_command = \"true\" }}\n\
             health = {{ url = \"http://{{{{host.address}}}}/health\" }}\n"
        )
    };
    let parsed = vesemir_core::config::Config::parse(&config("echo x\\{{vars.v}}"), std::path::Path::new("/"))?;
    let err = parsed.validate().expect_err("refused").to_string();
    assert!(
        err.contains(
            "services.web.vars.install_command: {{vars.v}} at line 1, column 8 of install_command is right after a backslash"
        ),
        "{err}"
    );

    // A playbook's steps are checked when the worker starts, against the service's text.
    let playbooks = ScratchDir::new("vp")?;
    std::fs::write(
        playbooks.path().join("quoted.toml"),
        "[[steps]]\nname = \"install\"\naction = \"run\"\ncommand = \"echo '{{version}}'\"\n",
    )?;
    let mut parsed = vesemir_core::config::Config::parse(
        &format!("{}playbook = \"quoted\"\n", config("/opt/app/install {{version}}")),
        std::path::Path::new("/"),
    )?;
    parsed.validate()?;
    parsed.worker.playbooks_dir = playbooks.path().to_owned();
    let err = vesemir_worker::playbook::check_services(&parsed).expect_err("refused").to_string();
    assert_eq!(
        err,
        "service web, step install: {{version}} at line 1, column 7 is inside single quotes, where nothing is expanded"
    );
    Ok(())
}
