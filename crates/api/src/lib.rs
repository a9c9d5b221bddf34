//! Tend's public gRPC API: the Rust types and tonic stubs generated from
//! `proto/`. It holds no logic; conversions to and from the domain live in
//! the service crates.

#![allow(missing_debug_implementations)] // generated code

/// The encoded `FileDescriptorSet` of every Tend proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tend_descriptor.bin"));

#[allow(clippy::all)] // generated code
pub mod events {
    pub mod v1 {
        tonic::include_proto!("tend.events.v1");
    }
}

#[allow(clippy::all)] // generated code
pub mod scheduler {
    pub mod v1 {
        tonic::include_proto!("tend.scheduler.v1");
    }
}

#[allow(clippy::all)] // generated code
pub mod practice {
    pub mod v1 {
        tonic::include_proto!("tend.practice.v1");
    }
}

#[allow(clippy::all)] // generated code
pub mod assessment {
    pub mod v1 {
        tonic::include_proto!("tend.assessment.v1");
    }
}

#[allow(clippy::all)] // generated code
pub mod arc {
    pub mod v1 {
        tonic::include_proto!("tend.arc.v1");
    }
}
