//! The committed CRDs in `crds/` are exactly what the Rust types generate.

#[test]
fn committed_crds_are_up_to_date() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for crd in warren_operator::crd::all() {
        let path = dir.join(warren_operator::crd::file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == warren_operator::crd::to_yaml(&crd),
            "{} is stale or missing: run `cargo run -p warren-operator --bin crdgen`",
            path.display()
        );
    }
}

#[test]
fn every_field_is_documented() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, sub) in props {
                let here = format!("{path}.{name}");
                let documented = sub.get("description").and_then(|d| d.as_str()).is_some_and(|d| !d.is_empty());
                // metadata/apiVersion/kind are Kubernetes' own.
                if !documented && !matches!(name.as_str(), "metadata" | "apiVersion" | "kind") {
                    missing.push(here.clone());
                }
                walk(&here, sub, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in warren_operator::crd::all() {
        let crd = serde_json::to_value(&crd).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            walk(&kind, &version["schema"]["openAPIV3Schema"], &mut missing);
        }
    }
    assert!(missing.is_empty(), "fields without a doc comment (kubectl explain shows nothing): {missing:#?}");
}
