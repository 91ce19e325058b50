//! Writes the CRDs generated from the Rust types to `crds/` (or the directory given).

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../crds").into());
    std::fs::create_dir_all(&dir)?;
    for crd in warren_operator::crd::all() {
        let path = std::path::Path::new(&dir).join(warren_operator::crd::file_name(&crd));
        std::fs::write(&path, warren_operator::crd::to_yaml(&crd))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
