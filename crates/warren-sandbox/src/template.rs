//! Snapshot templates (a paused sandbox flattened into one memory file and
//! one disk layer under `templates/<name>`) and clones (a resume whose
//! chain is a template's files, under a new id).

use std::path::PathBuf;
use std::time::Instant;

use warren_snapshot::{Generation, SnapshotHeader};
use warren_vmm::disk;

use crate::chain::{ChainMeta, blocking, now_ms};
use crate::dir::{DataDir, SandboxDir, fsync_dir, write_atomic};
use crate::error::{CreateError, SnapshotOpError, StepCause};
use crate::manager::{DirGuard, Manager, SandboxMeta};
use crate::resume::ResumeReport;
use crate::sandbox::Sandbox;
use crate::spec::SandboxSpec;

/// A snapshot template on disk.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TemplateMeta {
    /// Template name.
    pub name: String,
    /// The sandbox it was taken from.
    pub source_sandbox: String,
    /// The spec clones get (vCPUs and memory are locked to these).
    pub spec: SandboxSpec,
    /// Image key of the base image.
    pub image_key: String,
    /// The image's root disk below the template's frozen disk (never another
    /// template's disk).
    pub base_disk: PathBuf,
    /// qemu-img format of `base_disk`.
    #[serde(default = "raw_format")]
    pub base_disk_format: String,
    /// Kernel the snapshot runs (clones must boot the same one).
    pub kernel: PathBuf,
    /// Initramfs the snapshot booted with.
    pub initramfs: PathBuf,
    /// When it was taken (ms since the epoch).
    pub created_unix_ms: u64,
    /// Allocated bytes of its memory file.
    pub memory_bytes: u64,
    /// Allocated bytes of its disk layer.
    pub disk_bytes: u64,
}

fn raw_format() -> String {
    "raw".into()
}

/// Checks a template name (it becomes a directory name).
pub fn validate_template_name(name: &str) -> Result<(), SnapshotOpError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SnapshotOpError::InvalidName(name.to_string()))
    }
}

impl Manager {
    /// Turns a paused sandbox into the snapshot template `name`: its memory
    /// chain is flattened into one file and its disk layers into one qcow2
    /// layer over the base image, so the template is independent of the
    /// sandbox (which may be deleted or resumed afterwards).
    pub async fn create_template(
        &self,
        sandbox_id: &str,
        name: &str,
    ) -> Result<TemplateMeta, SnapshotOpError> {
        validate_template_name(name)?;
        if !self.is_paused(sandbox_id) {
            return Err(SnapshotOpError::NotPaused(sandbox_id.to_string()));
        }
        let _busy = self.mark_busy(sandbox_id);
        let data = DataDir::new(self.data_dir());
        let templates = data.templates();
        let target = data.template(name);
        if target.exists() {
            return Err(SnapshotOpError::TemplateExists(name.to_string()));
        }
        std::fs::create_dir_all(&templates)
            .map_err(|e| SnapshotOpError::io("creating the templates directory", e))?;
        let dir = self.sandboxes_dir().join(sandbox_id);
        let meta = SandboxMeta::read(&dir)
            .map_err(|detail| SnapshotOpError::corrupt(sandbox_id, detail))?;
        let header = warren_snapshot::read_header(&dir)
            .map_err(|e| SnapshotOpError::corrupt(sandbox_id, e))?;
        let staging = data.template_staging(name, std::process::id());
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging)
            .map_err(|e| SnapshotOpError::io("creating the template directory", e))?;
        let guard = DirGuard::new(staging.clone());

        // Memory: one flat generation.
        let memory = staging.join(DataDir::TEMPLATE_MEMORY);
        let (map, memory_bytes) = {
            let (dir, header, memory) = (dir.clone(), header.clone(), memory.clone());
            blocking(move || warren_snapshot::flatten(&dir, &header, &memory, 0)).await
        }
        .map_err(|e| SnapshotOpError::io("flattening the memory", e))?;
        std::fs::copy(
            header.resolve(&dir, &header.device_state),
            staging.join(DataDir::TEMPLATE_STATE),
        )
        .map_err(|e| SnapshotOpError::io("copying the device state", e))?;
        // Disk: one layer over the image's own root disk. A clone's base is
        // its template's disk: the new template goes down to that template's
        // base instead, so it never depends on another template (which could
        // then be deleted under it).
        let (root_disk, root_format) = match &meta.template {
            Some(parent) => {
                let parent = self.template(parent).map_err(|e| {
                    SnapshotOpError::corrupt(sandbox_id, StepCause::ParentTemplate(Box::new(e)))
                })?;
                (parent.base_disk, parent.base_disk_format)
            }
            None => (meta.base_disk.clone(), meta.base_disk_format.clone()),
        };
        let disk = staging.join(DataDir::TEMPLATE_DISK);
        let frozen = header.resolve(&dir, &header.disk);
        disk::flatten(&root_disk, &root_format, &frozen, &disk)
            .await
            .map_err(|e| SnapshotOpError::io("flattening the disk", e))?;
        let disk_bytes = warren_snapshot::allocated_bytes(&disk);
        let template_header = SnapshotHeader {
            memory_bytes: header.memory_bytes,
            generations: vec![Generation::sparse(0, DataDir::TEMPLATE_MEMORY)],
            map,
            device_state: DataDir::TEMPLATE_STATE.into(),
            disk: DataDir::TEMPLATE_DISK.into(),
            created_unix_ms: now_ms(),
            meta: header.meta.clone(),
        };
        let template = TemplateMeta {
            name: name.to_string(),
            source_sandbox: sandbox_id.to_string(),
            spec: meta.spec.clone(),
            image_key: meta.image_key.clone(),
            base_disk: root_disk,
            base_disk_format: root_format,
            kernel: meta.kernel.clone(),
            initramfs: meta.initramfs.clone(),
            created_unix_ms: now_ms(),
            memory_bytes,
            disk_bytes,
        };
        let json = serde_json::to_vec_pretty(&template).expect("template meta serializes");
        {
            let (staging, target, templates) = (staging.clone(), target.clone(), templates.clone());
            blocking(move || -> std::io::Result<()> {
                write_atomic(&staging.join(DataDir::TEMPLATE_META), &json)?;
                warren_snapshot::write_header_atomic(&staging, &template_header)
                    .map_err(std::io::Error::other)?;
                for file in [
                    DataDir::TEMPLATE_MEMORY,
                    DataDir::TEMPLATE_STATE,
                    DataDir::TEMPLATE_DISK,
                ] {
                    std::fs::File::open(staging.join(file))?.sync_all()?;
                }
                fsync_dir(&staging)?;
                std::fs::rename(&staging, &target)?;
                fsync_dir(&templates)
            })
            .await
        }
        .map_err(|e| SnapshotOpError::io("committing the template", e))?;
        guard.disarm();
        Ok(template)
    }

    /// Snapshot templates on this host.
    pub fn templates(&self) -> Vec<TemplateMeta> {
        let Ok(entries) = std::fs::read_dir(DataDir::new(self.data_dir()).templates()) else {
            return Vec::new();
        };
        let mut all: Vec<TemplateMeta> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| std::fs::read(e.path().join(DataDir::TEMPLATE_META)).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect();
        all.sort_by(|a: &TemplateMeta, b| a.name.cmp(&b.name));
        all
    }

    /// One snapshot template.
    pub fn template(&self, name: &str) -> Result<TemplateMeta, SnapshotOpError> {
        validate_template_name(name)?;
        let path = DataDir::new(self.data_dir())
            .template(name)
            .join(DataDir::TEMPLATE_META);
        let bytes =
            std::fs::read(&path).map_err(|_| SnapshotOpError::NoTemplate(name.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| SnapshotOpError::corrupt(name, e))
    }

    /// Sandboxes (running or paused) created from template `name`.
    pub fn template_users(&self, name: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.sandboxes_dir()) else {
            return Vec::new();
        };
        let mut users: Vec<String> = entries
            .flatten()
            .filter_map(|e| SandboxMeta::read(&e.path()).ok())
            .filter(|meta| meta.template.as_deref() == Some(name))
            .map(|meta| meta.id)
            .collect();
        users.sort();
        users
    }

    /// Deletes a snapshot template; refused while sandboxes use it.
    pub fn delete_template(&self, name: &str) -> Result<(), SnapshotOpError> {
        self.template(name)?;
        let users = self.template_users(name);
        if !users.is_empty() {
            return Err(SnapshotOpError::TemplateInUse {
                name: name.to_string(),
                users,
            });
        }
        let data = DataDir::new(self.data_dir());
        let templates = data.templates();
        // Rename first so a half-deleted template is never listed.
        let trash = data.template_deleting(name);
        std::fs::rename(data.template(name), &trash)
            .map_err(|e| SnapshotOpError::io("deleting the template", e))?;
        let _ = fsync_dir(&templates);
        std::fs::remove_dir_all(&trash).map_err(|e| SnapshotOpError::io("deleting the template", e))
    }

    /// Creates a sandbox from a snapshot template: a clone. It starts from
    /// the template's memory (served lazily, shared on disk with every
    /// other clone) and disk (its own layer on top), with a new id and
    /// hostname; only `env`, `metadata` and `keep_disk` of `request` apply
    /// (image, vCPUs and memory are the template's).
    pub async fn clone_template(
        &self,
        name: &str,
        request: &SandboxSpec,
    ) -> Result<(Sandbox, ResumeReport), SnapshotOpError> {
        self.clone_template_with_id(crate::id::new_sandbox_id(), name, request)
            .await
    }

    /// [`Manager::clone_template`] with an id the caller chose, so that it
    /// can keep the id busy until it has registered the clone.
    pub async fn clone_template_with_id(
        &self,
        id: String,
        name: &str,
        request: &SandboxSpec,
    ) -> Result<(Sandbox, ResumeReport), SnapshotOpError> {
        let _busy = self.mark_busy(&id);
        let started = Instant::now();
        let template = self.template(name)?;
        let template_dir = DataDir::new(self.data_dir()).template(name);
        let template_header = warren_snapshot::read_header(&template_dir)
            .map_err(|e| SnapshotOpError::corrupt(name, e))?;
        let mut spec = template.spec.clone();
        spec.env = request.env.clone();
        spec.metadata = request.metadata.clone();
        spec.keep_disk = request.keep_disk;
        // The clone resumes the template's devices: a network card exactly
        // when the template has one. With one, the request's policy (none
        // asked for: offline); without one (a template from before
        // networks), no network whatever the request says.
        spec.network = match (&template.spec.network, &request.network) {
            (None, wanted) => {
                if wanted.is_some() {
                    tracing::info!(
                        template = name,
                        "the template has no network card; the clone gets no network"
                    );
                }
                None
            }
            (Some(_), Some(policy)) => Some(policy.clone()),
            (Some(_), None) => Some(warren_net::NetworkPolicy {
                internet: false,
                allow_out: Vec::new(),
                deny_out: Vec::new(),
            }),
        };
        spec.validate(&self.host())
            .map_err(|e| SnapshotOpError::Create(CreateError::InvalidSpec(e)))?;
        let dir = self.sandboxes_dir().join(&id);
        std::fs::create_dir(&dir)
            .map_err(|e| SnapshotOpError::io("creating the sandbox directory", e))?;
        let guard = DirGuard::new(dir.clone());
        let meta = SandboxMeta {
            id: id.clone(),
            spec,
            image_key: template.image_key.clone(),
            created_unix_ms: now_ms(),
            owner_pid: std::process::id(),
            ephemeral: self.ephemeral(),
            kernel: template.kernel.clone(),
            initramfs: template.initramfs.clone(),
            base_disk: template_dir.join(DataDir::TEMPLATE_DISK),
            base_disk_format: "qcow2".into(),
            template: Some(name.to_string()),
        };
        let meta_json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        write_atomic(&SandboxDir::new(&dir).meta(), &meta_json)
            .map_err(|e| SnapshotOpError::io("writing the sandbox metadata", e))?;
        // The clone's snapshot is the template's, by absolute path.
        let absolute = |file: &str| {
            template_header
                .resolve(&template_dir, file)
                .to_string_lossy()
                .into_owned()
        };
        let header = SnapshotHeader {
            memory_bytes: template_header.memory_bytes,
            generations: template_header
                .generations
                .iter()
                .map(|g| Generation {
                    file: absolute(&g.file),
                    ..g.clone()
                })
                .collect(),
            map: template_header.map.clone(),
            device_state: absolute(&template_header.device_state),
            disk: absolute(&template_header.disk),
            created_unix_ms: now_ms(),
            meta: serde_json::to_value(ChainMeta {
                disk_layers: Vec::new(),
                vcpus: template.spec.vcpus,
                memory_mib: template.spec.memory_mib,
            })
            .expect("chain meta serializes"),
        };
        warren_snapshot::write_header_atomic(&dir, &header)
            .map_err(|e| SnapshotOpError::io("writing the clone's snapshot header", e))?;
        let restored = self.restore(&id, &dir, meta, true).await?;
        guard.disarm();
        Ok((
            restored.sandbox,
            ResumeReport {
                duration_ms: started.elapsed().as_millis() as u64,
                chain_length: restored.chain_length,
            },
        ))
    }
}
