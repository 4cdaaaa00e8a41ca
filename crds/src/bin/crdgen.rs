//! Writes the Registry CRD to `manifests/crds/registry.yaml` (or prints it with `-`).

fn main() {
    let yaml = berth_crds::crd_yaml();
    match std::env::args().nth(1).as_deref() {
        Some("-") => print!("{yaml}"),
        Some(path) => std::fs::write(path, yaml).expect("writing the CRD"),
        None => {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds/registry.yaml");
            std::fs::write(path, yaml).expect("writing the CRD");
        }
    }
}
