//! Compiles the node-to-node gRPC contract. protoc comes from `PROTOC` when
//! set, else from the vendored binary (no install step).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => std::path::PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["../../proto/cairn/v1/raft.proto"],
        &["../../proto"],
    )?;
    println!("cargo:rerun-if-changed=../../proto/cairn/v1/raft.proto");
    Ok(())
}
