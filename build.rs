//! Compiles the wire contract in proto/ with protox, so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/kh/v1/types.proto",
        "proto/kh/v1/steps.proto",
        "proto/kh/v1/enrollment.proto",
        "proto/kh/v1/node.proto",
        "proto/kh/v1/admin.proto",
        "proto/kh/v1/agent.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set is embedded so the authorization test can walk every RPC
    // of every service without a hand-kept list.
    std::fs::write(
        out.join("kh_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec, but a request that does not decode is the caller's
        // INVALID_ARGUMENT rather than INTERNAL (see src/codec.rs).
        .codec_path("crate::codec::KhCodec")
        // The coordinator persists facts as they were reported and khctl prints
        // them as JSON; deriving serde here avoids a hand-kept mirror type.
        .type_attribute(
            "kh.v1.Facts",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
