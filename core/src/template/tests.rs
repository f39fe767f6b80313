use super::*;

fn operator() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app_dir".to_owned(), "/opt/app".to_owned()),
        ("install_command".to_owned(), "{{app_dir}}/bin/install {{version}}".to_owned()),
        ("loop".to_owned(), "{{loop}}".to_owned()),
        ("escape".to_owned(), "echo x\\".to_owned()),
    ])
}

fn values() -> Values {
    Values::from([
        ("version".to_owned(), "1.2.3".to_owned()),
        ("vars.note".to_owned(), "it's $(touch /tmp/x); `id`".to_owned()),
        ("vars.a.b-c".to_owned(), "v".to_owned()),
        ("host.address".to_owned(), "127.0.20.1".to_owned()),
        ("host.name".to_owned(), "vm-01".to_owned()),
    ])
}

fn shell(template: &str) -> Result<ShellCommand, TemplateError> {
    ShellTemplate::parse(template, &operator())?.render(&values())
}

fn refusal(template: &str) -> Refusal {
    match ShellTemplate::parse(template, &operator()) {
        Err(TemplateError::Refused { why, .. }) => why,
        other => panic!("{template:?} was not refused: {other:?}"),
    }
}

#[test]
fn values_reach_the_command_as_environment_variables_never_as_text() {
    let command = shell("{{install_command}} --note {{vars.note}}").unwrap();
    assert_eq!(command.script, r#"/opt/app/bin/install "${VESEMIR_VERSION}" --note "${VESEMIR_VAR_note}""#);
    assert_eq!(
        command.env,
        [
            ("VESEMIR_VERSION".to_owned(), "1.2.3".to_owned()),
            ("VESEMIR_VAR_note".to_owned(), "it's $(touch /tmp/x); `id`".to_owned())
        ]
    );
}

#[test]
fn a_reference_is_quoted_only_where_the_shell_is_not_already_quoting() {
    let cases = [
        ("echo \"v={{version}}\"", "echo \"v=${VESEMIR_VERSION}\""),
        ("X={{version}} make", "X=\"${VESEMIR_VERSION}\" make"),
        ("echo $(basename {{version}})", "echo $(basename \"${VESEMIR_VERSION}\")"),
        ("echo \"$(echo {{version}})\"", "echo \"$(echo \"${VESEMIR_VERSION}\")\""),
        ("cat <<EOF\nv={{version}}\nEOF", "cat <<EOF\nv=${VESEMIR_VERSION}\nEOF"),
        ("echo {{version}} > /tmp/{{host.name}}", "echo \"${VESEMIR_VERSION}\" > /tmp/\"${VESEMIR_HOST_NAME}\""),
        ("if [ {{host.name}} = vm-02 ]; then echo; fi", "if [ \"${VESEMIR_HOST_NAME}\" = vm-02 ]; then echo; fi"),
        ("echo {{vars.a.b-c}}", "echo \"${VESEMIR_VAR_a_b_c}\""),
    ];
    for (template, script) in cases {
        assert_eq!(shell(template).unwrap().script, script, "{template}");
    }
}

#[test]
fn every_place_that_would_interpret_a_value_or_not_expand_it_is_refused() {
    let cases = [
        ("echo x\\{{version}}", Refusal::AfterBackslash),
        ("{{escape}}{{version}}", Refusal::AfterBackslash),
        ("echo ${{version}}", Refusal::AfterDollar),
        ("echo '{{version}}'", Refusal::SingleQuotes),
        ("echo $'{{version}}'", Refusal::AnsiCQuotes),
        ("echo $\"{{version}}\"", Refusal::TranslatedString),
        ("echo `echo {{version}}`", Refusal::Backquotes),
        ("echo \"`echo {{version}}`\"", Refusal::Backquotes),
        ("echo ${X:-{{version}}}", Refusal::ParameterExpansion),
        ("echo $(( {{version}} + 1 ))", Refusal::Arithmetic),
        ("(( {{version}} ))", Refusal::Arithmetic),
        ("[[ {{version}} -eq 1 ]]", Refusal::Arithmetic),
        ("let x={{version}}", Refusal::Arithmetic),
        ("true # {{version}}", Refusal::Comment),
        ("cat <<'EOF'\n{{version}}\nEOF", Refusal::QuotedHereDocument),
        ("cat <<EOF\n$(echo {{version}})\nEOF", Refusal::HereDocumentSubstitution),
        ("cat <<{{version}}\nx\n", Refusal::HereDocumentDelimiter),
        ("{{version}}", Refusal::CommandName),
        ("true; \"{{version}}\" x", Refusal::CommandName),
        ("if {{version}}; then :; fi", Refusal::CommandName),
        ("X=1 {{version}}", Refusal::CommandName),
        ("eval echo {{version}}", Refusal::RunsCode("eval".to_owned())),
        ("sh -c \"echo {{version}}\"", Refusal::BeforeProgram("sh".to_owned())),
        ("sudo -u app {{version}}", Refusal::BeforeProgram("sudo".to_owned())),
        ("sudo systemctl restart {{version}}", Refusal::BeforeProgram("sudo".to_owned())),
        ("sudo /bin/sh -c {{version}}", Refusal::BeforeProgram("sh".to_owned())),
        ("timeout 10 /usr/bin/env {{version}}", Refusal::BeforeProgram("env".to_owned())),
        ("/usr/bin/eval {{version}}", Refusal::RunsCode("eval".to_owned())),
        ("flock /tmp/lock {{version}}", Refusal::RunsCode("flock".to_owned())),
        ("echo {{version}} | bash", Refusal::PipedInto("bash".to_owned())),
        ("echo {{version}} | tr a b | sh -s", Refusal::PipedInto("sh".to_owned())),
    ];
    for (template, why) in cases {
        assert_eq!(refusal(template), why, "{template}");
    }
}

#[test]
fn a_refusal_names_the_placeholder_and_its_position() {
    let err = ShellTemplate::parse("true\necho x\\{{vars.v}}", &operator()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "{{vars.v}} at line 2, column 8 is right after a backslash, which would escape the value"
    );
    let nested = BTreeMap::from([("cmd".to_owned(), "echo '{{version}}'".to_owned())]);
    let err = ShellTemplate::parse("{{cmd}}", &nested).unwrap_err();
    assert!(err.to_string().starts_with("{{version}} at line 1, column 7 of cmd is inside single quotes"), "{err}");
}

#[test]
fn a_value_may_follow_the_program_a_wrapper_runs() {
    for template in [
        "sudo /usr/local/bin/install-release payments-api {{version}}",
        "sudo -u app -- /opt/app/bin/install {{version}}",
        "timeout 10 ./install {{version}}",
        "nohup /opt/app/run {{version}} &",
        "bash /opt/app/install.sh {{version}}",
        "sh -c 'printf %s \"$1\"' sh {{version}}",
        "env RELEASE={{version}} /opt/app/install",
    ] {
        assert!(shell(template).is_ok(), "{template}: {:?}", shell(template));
    }
}

#[test]
fn separate_commands_and_pipelines_are_told_apart() {
    assert!(shell("echo {{version}}; sh -c true").is_ok());
    assert!(shell("echo {{version}} && bash -c true").is_ok());
    assert!(shell("echo {{version}} || sh").is_ok());
    assert!(shell("printf %s {{version}} 2>/dev/null | tee /tmp/x").is_ok());
}

#[test]
fn unknown_unclosed_and_cyclic_templates_are_errors() {
    assert!(matches!(shell("{{nope}}"), Err(TemplateError::Unknown { .. })));
    assert!(matches!(shell("echo {{vars.Bad Name}}"), Err(TemplateError::Unknown { .. })));
    assert!(matches!(shell("x {{version"), Err(TemplateError::Unclosed { .. })));
    assert!(matches!(shell("{{loop}}"), Err(TemplateError::TooDeep { .. })));
    assert_eq!(shell("echo {{vars.missing}}"), Err(TemplateError::Missing("vars.missing".to_owned())));
}

#[test]
fn urls_take_host_names_in_the_host_and_encode_values_elsewhere() {
    let url = |t: &str| UrlTemplate::parse(t, &operator()).and_then(|u| u.render(&values()));
    assert_eq!(url("http://{{host.address}}:8080/health").unwrap(), "http://127.0.20.1:8080/health");
    assert_eq!(
        url("https://{{host.name}}/v/{{vars.note}}?x={{version}}").unwrap(),
        "https://vm-01/v/it%27s%20%24%28touch%20%2Ftmp%2Fx%29%3B%20%60id%60?x=1.2.3"
    );
    assert_eq!(url("http://{{vars.note}}/"), Err(TemplateError::UnsafeInHost("vars.note".to_owned())));
    assert!(matches!(url("{{host.name}}://x/"), Err(TemplateError::UrlPrefix { .. })));
    assert_eq!(url("file:///etc/passwd"), Err(TemplateError::UrlScheme));
}

#[test]
fn a_server_name_must_come_out_as_an_haproxy_name() {
    let name = |t: &str| NameTemplate::parse(t, &operator()).and_then(|n| n.render(&values()));
    assert_eq!(name("{{host.name}}").unwrap(), "vm-01");
    assert!(matches!(name("{{vars.note}}"), Err(TemplateError::ServerName(_))));
}

#[test]
fn environment_names_follow_the_value_names() {
    assert_eq!(env_name("host.address"), "VESEMIR_HOST_ADDRESS");
    assert_eq!(env_name("deployment_id"), "VESEMIR_DEPLOYMENT_ID");
    assert_eq!(env_name("vars.release.channel"), "VESEMIR_VAR_release_channel");
}
