//! Every WGSL kernel parses and validates with naga (no adapter needed), so
//! a shader error fails CI even on machines without any GPU.

#[cfg(feature = "wgpu")]
#[test]
fn every_wgsl_module_validates_with_naga() {
    use daa_core::wgpu::shaders::Kernel;
    for kernel in Kernel::ALL {
        let source = kernel.source();
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{}: parse error:\n{}", kernel.label(), e.emit_to_string(&source)));
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::default());
        validator
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: validation error:\n{}", kernel.label(), e.emit_to_string(&source)));
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn every_shader_file_is_used_by_a_kernel() {
    let dir = daa_tests::manifest_dir().join("../shaders/wgsl");
    let used: String = daa_core::wgpu::shaders::Kernel::ALL.iter().map(|k| k.source()).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let first_code_line = text.lines().find(|l| !l.starts_with("//") && !l.trim().is_empty()).unwrap();
        assert!(used.contains(first_code_line), "{} is not part of any kernel", path.display());
        assert!(text.starts_with("// "), "{} must start with a header naming its CPU twin", path.display());
    }
}
