//! The published contracts: the OpenAPI description passes a real
//! validator and is what the agent serves; the bodies tests receive are
//! validated against it (see `common::schema`), and that validation can
//! fail; `qcapsd probe` output of every transcript matches `qcapsd probe
//! --schema`.

use crate::common::{self, Http, InProcess};

#[ignore = "needs openapi-spec-validator"]
#[test]
fn the_openapi_description_passes_openapi_spec_validator_and_is_what_is_served() {
    let d = tempfile::tempdir().unwrap();
    let (agent, _, _) = InProcess::with_x86(d.path(), "caps_10.0.0_x86_64.replies", "");
    let served = agent.get("/v1/openapi.json");
    assert_eq!(served.status, 200);
    assert!(served.header("etag").is_some());
    assert_eq!(served.json(), qcapsd::api::openapi::document());
    let file = d.path().join("openapi.json");
    std::fs::write(&file, &served.body).unwrap();
    let validator = common::require_tool("openapi-spec-validator");
    let out = std::process::Command::new(validator)
        .args(["--schema", "3.1"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The validation every test gets is live: a body that breaks its schema
/// fails, and answers of every route are validated.
#[test]
fn body_validation_catches_a_wrong_body_and_covers_the_routes() {
    let bad = std::panic::catch_unwind(|| {
        common::schema::validate("GET", "/v1/emulators", 200, br#"[{"name": 1}]"#)
    });
    assert!(bad.is_err(), "a row without its fields passed");
    let bad_error = std::panic::catch_unwind(|| {
        common::schema::validate("GET", "/v1/emulators/x/machines", 404, br#"{"error": 5}"#)
    });
    assert!(
        bad_error.is_err(),
        "an error body of the wrong shape passed"
    );
    common::schema::validate(
        "GET",
        "/v1/emulators/x/machines",
        404,
        br#"{"error": "no emulator named 'x'", "status": 404}"#,
    );

    let d = tempfile::tempdir().unwrap();
    let (agent, _, _) = InProcess::with_x86(d.path(), "caps_10.0.0_x86_64.replies", "");
    let paths = [
        "/v1/emulators",
        "/v1/emulators/x86_64",
        "/v1/emulators/x86_64/machines",
        "/v1/emulators/x86_64/cpu-models",
        "/v1/emulators/x86_64/devices",
        "/v1/emulators/x86_64/devices/virtio-blk-pci",
        "/v1/emulators/x86_64/commands",
        "/v1/emulators/x86_64/changes",
        "/v1/changes",
        "/v1/check?machine=q35&cpu=Haswell&device=virtio-blk-pci",
        "/v1/host",
        "/healthz",
        "/readyz",
        "/v1/emulators/nope",
        "/v1/check?cpus=0",
    ];
    for p in paths {
        let r = agent.get(p);
        assert!(r.status == 200 || r.status >= 400, "{p}: {}", r.status);
    }
    assert_eq!(
        agent
            .request("POST", "/v1/emulators/x86_64/revalidate", &[])
            .status,
        202
    );
    let seen = common::schema::seen();
    for key in [
        "GET /v1/emulators/{name} 200",
        "GET /v1/check 200",
        "GET /v1/check 400",
        "GET /v1/host 200",
        "GET /v1/emulators/{name} 404",
        "POST /v1/emulators/{name}/revalidate 202",
    ] {
        assert!(
            seen.iter().any(|k| k == key),
            "{key} not validated: {seen:?}"
        );
    }
}

#[test]
fn probe_output_of_every_transcript_matches_the_document_schema() {
    let schema_out = common::qcapsd(&["probe", "--schema"]);
    assert!(schema_out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&schema_out.stdout).unwrap();
    assert_eq!(schema, qcapsd::api::openapi::document_schema());
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let d = tempfile::tempdir().unwrap();
    let transcripts = common::all_transcripts();
    assert!(transcripts.len() >= 9);
    for t in transcripts {
        let name = t.file_stem().unwrap().to_string_lossy().into_owned();
        let bin = common::replay_emulator(d.path(), &name, &t);
        let out = common::qcapsd(&["probe", bin.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .take(5)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        // And the schema is strict: an unknown member is refused.
        let mut extra = doc.clone();
        extra["surprise"] = true.into();
        assert!(
            !validator.is_valid(&extra),
            "{name}: unknown member accepted"
        );
    }
}
