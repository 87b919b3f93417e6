//! Compiles the client side of etcd's KV.Put for `cairn bench etcd`.
//! protoc comes from `PROTOC` when set, else from the vendored binary.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => std::path::PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .compile_with_config(
            config,
            &["../../proto/bench/etcd_kv.proto"],
            &["../../proto"],
        )?;
    println!("cargo:rerun-if-changed=../../proto/bench/etcd_kv.proto");
    Ok(())
}
