//! Generates `crates/hearsay-admin/src/generated/` from `proto/` (run from anywhere).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = root.join("crates/hearsay-admin/src/generated");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .emit_rerun_if_changed(false)
        .file_descriptor_set_path(out.join("admin_descriptor.bin"))
        .out_dir(&out)
        .compile_protos(
            &[root.join("proto/hearsay/admin/v1/admin.proto")],
            &[root.join("proto")],
        )?;
    println!("generated into {}", out.display());
    Ok(())
}
