//! Compiles `proto/` with protox, so a build needs nothing outside cargo.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "tend/events/v1/events.proto",
        "tend/scheduler/v1/scheduler.proto",
        "tend/practice/v1/practice.proto",
        "tend/assessment/v1/assessment.proto",
        "tend/arc/v1/arc.proto",
        "tend/privacy/v1/privacy.proto",
    ];
    let fds = protox::compile(files, [&root])?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Server reflection serves this descriptor set.
    std::fs::write(
        out.join("tend_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
