//! Tend's public gRPC API: the Rust types and tonic stubs generated from
//! `proto/`. It holds no logic; conversions to and from the domain live in
//! the service crates.

#![allow(missing_debug_implementations)] // generated code

pub mod strings;

// The string checks `build.rs` generates for every message.
include!(concat!(env!("OUT_DIR"), "/strings.rs"));

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
pub mod privacy {
    pub mod v1 {
        tonic::include_proto!("tend.privacy.v1");
    }
}

#[allow(clippy::all)] // generated code
pub mod webhooks {
    pub mod v1 {
        tonic::include_proto!("tend.webhooks.v1");
    }
}

#[allow(clippy::all)] // generated code
pub mod exports {
    pub mod v1 {
        tonic::include_proto!("tend.exports.v1");
    }
}

#[allow(clippy::all)] // generated code
pub mod arc {
    pub mod v1 {
        tonic::include_proto!("tend.arc.v1");
    }
}

/// Every method of the services in an encoded descriptor set (Tend's
/// [`FILE_DESCRIPTOR_SET`], or health's and reflection's) as
/// `package.Service/Method`, so that metrics name exactly what is served.
pub fn method_names(descriptor_set: &[u8]) -> Vec<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(descriptor_set) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                names.push(format!(
                    "{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    #[test]
    fn method_names_come_from_the_descriptors() {
        let names = super::method_names(super::FILE_DESCRIPTOR_SET);
        assert!(names.contains(&"tend.practice.v1.PracticeLogService/LogPractice".to_owned()));
        assert!(names.contains(&"tend.arc.v1.ArcService/GetCohort".to_owned()));
        assert!(names.len() > 30, "{names:?}");
    }
}
