//! Compiles the host-facing gRPC contract, with a descriptor set for
//! server reflection. protoc comes from `PROTOC` when set, else from the
//! vendored binary (no install step).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => std::path::PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("host_descriptor.bin"))
        .compile_with_config(
            config,
            &["../../proto/cairn/v1/host.proto"],
            &["../../proto"],
        )?;
    println!("cargo:rerun-if-changed=../../proto/cairn/v1/host.proto");
    Ok(())
}
