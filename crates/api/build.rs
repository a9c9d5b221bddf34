//! Compiles `proto/` with protox, so a build needs nothing outside cargo.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: one
    // target directory may serve several checkouts.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "tend/events/v1/events.proto",
        "tend/scheduler/v1/scheduler.proto",
        "tend/practice/v1/practice.proto",
        "tend/assessment/v1/assessment.proto",
        "tend/arc/v1/arc.proto",
        "tend/privacy/v1/privacy.proto",
        "tend/webhooks/v1/webhooks.proto",
        "tend/exports/v1/exports.proto",
    ];
    let fds = protox::compile(files, [&root])?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Server reflection serves this descriptor set.
    std::fs::write(
        out.join("tend_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    strings_checks(&fds, &out)?;

    tonic_prost_build::configure()
        // Decodes like prost's, then refuses control characters in
        // strings (src/strings.rs).
        .codec_path("crate::strings::CheckedCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}

/// Writes `strings.rs`: for every Tend message, a walk over its string
/// fields (nested messages included) that the server's codec runs on each
/// request it decodes (see `src/strings.rs`).
fn strings_checks(fds: &FileDescriptorSet, out: &Path) -> std::io::Result<()> {
    let mut inputs = HashSet::new();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                inputs.insert(method.input_type().trim_start_matches('.').to_owned());
            }
        }
    }
    let mut code = String::new();
    for file in fds.file.iter().filter(|f| f.package().starts_with("tend.")) {
        let module = format!(
            "crate::{}",
            file.package()["tend.".len()..].replace('.', "::")
        );
        for message in &file.message_type {
            message_checks(&mut code, file.package(), &module, message, &inputs);
        }
    }
    std::fs::write(out.join("strings.rs"), code)
}

fn message_checks(
    code: &mut String,
    scope: &str,
    module: &str,
    message: &DescriptorProto,
    inputs: &HashSet<String>,
) {
    use std::fmt::Write;
    let full = format!("{scope}.{}", message.name());
    let rust = format!("{module}::{}", message.name().to_upper_camel_case());
    let nested = format!("{module}::{}", message.name().to_snake_case());
    let mut body = String::new();
    for field in &message.field {
        let name = field.name();
        let ident = rust_ident(&name.to_snake_case());
        let label = field.label();
        let repeated = label == Label::Repeated;
        // A proto3 `optional` is a synthetic oneof: an `Option` field.
        let real_oneof = field.oneof_index.is_some() && !field.proto3_optional();
        if let Some(entry) = map_entry(message, field) {
            // A map: its string keys, and its string or message values,
            // named `<map>.key` and `<map>.value`.
            let mut checks = String::new();
            for (part, var) in entry.field.iter().zip(["k", "v"]) {
                let part_name = part.name();
                match part.r#type() {
                    Type::String => {
                        let _ = write!(
                            checks,
                            "crate::strings::check(&at.join({name:?}), {part_name:?}, {var})?; "
                        );
                    }
                    Type::Message if part.type_name().starts_with(".tend.") => {
                        let _ = write!(
                            checks,
                            "crate::strings::Strings::check_fields({var}, &at.join({name:?}).join({part_name:?}))?; "
                        );
                    }
                    _ => {}
                }
            }
            if !checks.is_empty() {
                let _ = writeln!(
                    body,
                    "#[allow(unused_variables)] for (k, v) in &self.{ident} {{ {checks}}}"
                );
            }
            continue;
        }
        let kind = match field.r#type() {
            Type::String => "string",
            Type::Message if field.type_name().starts_with(".tend.") => "message",
            _ => continue,
        };
        let check = |value: &str| match kind {
            "string" => format!("crate::strings::check(at, {name:?}, {value})?;"),
            _ => format!("crate::strings::Strings::check_fields({value}, &at.join({name:?}))?;"),
        };
        if real_oneof {
            let oneof = &message.oneof_decl[field.oneof_index() as usize];
            let enum_path = format!(
                "{nested}::{}::{}",
                oneof.name().to_upper_camel_case(),
                name.to_upper_camel_case()
            );
            let _ = writeln!(
                body,
                "if let Some({enum_path}(v)) = &self.{} {{ {} }}",
                rust_ident(&oneof.name().to_snake_case()),
                check("v")
            );
        } else if repeated {
            let _ = writeln!(body, "for v in &self.{ident} {{ {} }}", check("v"));
        } else if kind == "message" || field.proto3_optional() {
            let _ = writeln!(body, "if let Some(v) = &self.{ident} {{ {} }}", check("v"));
        } else {
            let _ = writeln!(body, "{{ let v = &self.{ident}; {} }}", check("v"));
        }
    }
    let request = if inputs.contains(&full) {
        "self.check_fields(&crate::strings::At::root())"
    } else {
        "Ok(())"
    };
    let _ = writeln!(
        code,
        "impl crate::strings::Strings for {rust} {{\n\
         #[allow(unused_variables)]\n\
         fn check_fields(&self, at: &crate::strings::At) -> Result<(), crate::strings::BadString> {{\n{body}Ok(())\n}}\n\
         fn check_request(&self) -> Result<(), crate::strings::BadString> {{ {request} }}\n}}"
    );
    for child in &message.nested_type {
        if child.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        message_checks(code, &full, &nested, child, inputs);
    }
}

/// The entry type of a map field (its `key` and `value`), if it is one.
fn map_entry<'a>(
    message: &'a DescriptorProto,
    field: &FieldDescriptorProto,
) -> Option<&'a DescriptorProto> {
    if field.r#type() != Type::Message {
        return None;
    }
    let leaf = field.type_name().rsplit('.').next().unwrap_or_default();
    message
        .nested_type
        .iter()
        .find(|n| n.name() == leaf && n.options.as_ref().is_some_and(|o| o.map_entry()))
}

fn rust_ident(name: &str) -> String {
    match name {
        "type" | "match" | "ref" | "move" | "mod" | "fn" | "use" | "impl" | "self" | "crate"
        | "struct" | "enum" | "trait" | "loop" | "for" | "in" | "where" | "as" | "static"
        | "const" | "let" | "mut" | "pub" | "return" | "async" | "await" | "dyn" | "box" => {
            format!("r#{name}")
        }
        _ => name.to_owned(),
    }
}
