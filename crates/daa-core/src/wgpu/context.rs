//! Adapter, device and queue; pipelines built once per device; error capture;
//! readback through `map_async` and an awaited channel (so the same code runs
//! in a browser, where nothing may block).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::shaders::Kernel;
use crate::error::{DaaError, Result};

pub(crate) fn device_error(message: impl Into<String>) -> DaaError {
    DaaError::Device { backend: "wgpu", message: message.into() }
}

/// What the adapter is, for reports.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Adapter name (`llvmpipe (LLVM 15.0.6, 256 bits)`, `NVIDIA H100 …`).
    pub name: String,
    /// Graphics API in use (Vulkan, Metal, Dx12, BrowserWebGpu, …).
    pub backend: String,
    /// Device type (DiscreteGpu, Cpu, …).
    pub device_type: String,
    /// Largest storage buffer binding, bytes.
    pub max_binding_bytes: u64,
}

/// The shared state of a wgpu device.
#[derive(Debug)]
pub(crate) struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    /// Largest storage binding and buffer, bytes.
    pub max_binding: u64,
    pub max_workgroups: u32,
    pipelines: Mutex<HashMap<Kernel, wgpu::ComputePipeline>>,
    /// First uncaptured error or device loss, reported by the next operation.
    fault: Arc<Mutex<Option<String>>>,
}

impl Context {
    pub(crate) async fn new(options: &super::WgpuOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
            })
            .await
            .map_err(|e| {
                device_error(format!(
                    "no WebGPU/Vulkan adapter found ({e}); install mesa-vulkan-drivers or use --backend cpu"
                ))
            })?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let required_limits = wgpu::Limits {
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            ..wgpu::Limits::downlevel_defaults()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("daa"),
                required_features: wgpu::Features::empty(),
                required_limits: required_limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| device_error(format!("cannot open {}: {e}", info.name)))?;
        let fault = Arc::new(Mutex::new(None::<String>));
        let on_error = Arc::clone(&fault);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = on_error.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }));
        let on_lost = Arc::clone(&fault);
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = on_lost.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| format!("device lost ({reason:?}): {message}"));
        });
        let adapter_binding = required_limits.max_storage_buffer_binding_size.min(required_limits.max_buffer_size);
        let max_binding =
            options.max_binding_bytes.map_or(adapter_binding, |cap| cap.clamp(4, adapter_binding)) / 4 * 4;
        Ok(Self {
            summary: AdapterSummary {
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                max_binding_bytes: max_binding,
            },
            device,
            queue,
            max_binding,
            max_workgroups: required_limits.max_compute_workgroups_per_dimension,
            pipelines: Mutex::new(HashMap::new()),
            fault,
        })
    }

    /// Fails with the first error the device reported since it was opened.
    pub(crate) fn check(&self) -> Result<()> {
        match self.fault.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(message) => Err(device_error(message.clone())),
            None => Ok(()),
        }
    }

    /// The pipeline of `kernel`, built on first use and reused.
    pub(crate) fn pipeline(&self, kernel: Kernel) -> Result<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&kernel) {
            return Ok(p.clone());
        }
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.label()),
            source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.label()),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        self.check()?;
        cache.insert(kernel, pipeline.clone());
        Ok(pipeline)
    }

    /// A storage buffer holding `bytes` (padded to a multiple of 4).
    pub(crate) fn storage_with(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let mut padded;
        let contents = if bytes.len().is_multiple_of(4) && !bytes.is_empty() {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            &padded
        };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// A zeroed storage buffer of `bytes` (at least 4).
    pub(crate) fn storage_zeroed(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.div_ceil(4).max(1) * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A uniform buffer holding `value`.
    pub(crate) fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM,
        })
    }

    /// Workgroup grid for `groups` workgroups: `(x, y)` with `x · y ≥ groups`.
    pub(crate) fn grid(&self, groups: u32) -> (u32, u32) {
        let x = groups.clamp(1, self.max_workgroups);
        (x, groups.div_ceil(x).max(1))
    }

    /// Records one dispatch of `kernel` over `groups` workgroups with the
    /// given buffers at bindings 0, 1, 2, … and submits it.
    pub(crate) fn dispatch(&self, kernel: Kernel, buffers: &[&wgpu::Buffer], grid: (u32, u32)) -> Result<()> {
        let pipeline = self.pipeline(kernel)?;
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.label()),
            layout: &layout,
            entries: &entries,
        });
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(kernel.label()) });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.label()),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(grid.0, grid.1, 1);
        }
        self.queue.submit([encoder.finish()]);
        self.check()
    }

    /// A copy of `source` in a new storage buffer.
    pub(crate) fn duplicate(&self, label: &str, source: &wgpu::Buffer) -> wgpu::Buffer {
        let copy = self.storage_zeroed(label, source.size());
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        encoder.copy_buffer_to_buffer(source, 0, &copy, 0, source.size());
        self.queue.submit([encoder.finish()]);
        copy
    }

    /// Reads a buffer back: copy to a mappable buffer, `map_async`, await the
    /// callback through a channel. Natively the device is polled to completion
    /// first; in a browser the event loop completes it.
    pub(crate) async fn read(&self, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
        let size = buffer.size();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("daa readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let (sender, receiver) = flume::bounded(1);
        staging.slice(..).map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| device_error(format!("waiting for the GPU failed: {e}")))?;
        receiver
            .recv_async()
            .await
            .map_err(|_| device_error("readback was cancelled (device lost?)"))?
            .map_err(|e| device_error(format!("cannot map the readback buffer: {e}")))?;
        let bytes = staging.slice(..).get_mapped_range().to_vec();
        staging.unmap();
        self.check()?;
        Ok(bytes)
    }
}
