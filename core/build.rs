//! Generates the Rust types of StateFun's request-reply protocol from `proto/`, with a
//! pure-Rust protobuf compiler (no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/request-reply.proto");
    let descriptors = protox::compile(["proto/request-reply.proto"], ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
