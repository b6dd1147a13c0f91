//! The kernel part: Debian's cloud kernel and the virtio modules the init
//! must load, in dependency order.
//!
//! Debian's `linux-image-cloud-amd64` builds every virtio driver as a
//! module and ships no `modules.dep`, so the order comes from each module's
//! own `.modinfo` `depends=` field, read from the ELF file here (`modinfo`
//! is not on the host).
//!
//! Key = hash(recipe version, metapackage, resolved package and version,
//! module list). Resolving the metapackage asks apt, which takes a while,
//! so a published kernel for the same recipe is reused without asking apt
//! unless a refresh is requested.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::{Cache, Part, read_manifest, write_synced};
use crate::elf::Elf;
use crate::error::{ImageError, ModuleError};
use crate::host;
use crate::key::KeyHasher;
use crate::progress::Progress;

/// Bump when the layout or contents of a kernel part change.
const KERNEL_RECIPE_VERSION: u32 = 1;

/// Directory-name prefix of kernel parts.
pub(crate) const PART: &str = "kernel";

/// File name of the kernel image inside the part.
pub(crate) const VMLINUZ: &str = "vmlinuz";
/// Directory of the module files inside the part.
pub(crate) const MODULES_DIR: &str = "modules";

/// Which kernel to take and which modules the guest needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelRecipe {
    /// The Debian metapackage that depends on the current kernel.
    pub(crate) metapackage: &'static str,
    /// Module names (as in `name=`: underscores), in preferred load order
    /// among independent modules.
    pub(crate) modules: &'static [&'static str],
}

/// The guest kernel: disk (virtio-blk), the agent channel (virtio-console,
/// i.e. virtio-serial), entropy (virtio-rng) and the network card
/// (virtio-net, which needs the failover modules) over virtio-pci.
pub(crate) const KERNEL: KernelRecipe = KernelRecipe {
    metapackage: "linux-image-cloud-amd64",
    modules: &[
        "virtio_ring",
        "virtio",
        "virtio_pci_legacy_dev",
        "virtio_pci_modern_dev",
        "virtio_pci",
        "virtio_blk",
        "virtio_console",
        "virtio_rng",
        "failover",
        "net_failover",
        "virtio_net",
    ],
};

/// What the kernel manifest records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelDetails {
    /// Version of the kernel recipe code at build time.
    pub recipe_version: u32,
    /// Hash of the recipe without the resolved package: finds a cached
    /// kernel for this recipe without asking apt.
    pub recipe_hash: String,
    /// The metapackage that was resolved.
    pub metapackage: String,
    /// The concrete package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Its Debian version.
    pub package_version: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// Modules in load order.
    pub modules: Vec<ModuleInfo>,
}

/// One kernel module of the part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Module name (`name=` in `.modinfo`), e.g. `virtio_rng`.
    pub name: String,
    /// File name, e.g. `virtio-rng.ko`.
    pub file: String,
    /// Modules it depends on.
    pub depends: Vec<String>,
}

/// The concrete package a recipe resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) package: String,
    pub(crate) version: String,
}

fn recipe_hasher(recipe: &KernelRecipe) -> KeyHasher {
    let mut h = KeyHasher::new("warren-image/kernel");
    h.field("recipe_version", KERNEL_RECIPE_VERSION.to_le_bytes())
        .field("metapackage", recipe.metapackage)
        .list("modules", recipe.modules);
    h
}

/// Hash of the recipe alone (no resolved package).
pub(crate) fn recipe_hash(recipe: &KernelRecipe) -> String {
    recipe_hasher(recipe).finish()
}

/// The cache key of the kernel part.
pub(crate) fn kernel_key(recipe: &KernelRecipe, resolved: &Resolved) -> String {
    recipe_hasher(recipe)
        .field("package", &resolved.package)
        .field("package_version", &resolved.version)
        .finish()
}

/// Asks apt which concrete kernel package the metapackage stands for now.
pub(crate) fn resolve(
    recipe: &KernelRecipe,
    progress: &dyn Progress,
) -> Result<Resolved, ImageError> {
    host::with_apt_retry(progress, || {
        let package = host::apt_depends(recipe.metapackage, "linux-image-")?;
        let version = host::apt_candidate(&package)?;
        Ok(Resolved { package, version })
    })
}

/// The newest published kernel built from this recipe, if any.
fn newest_cached(
    cache: &Cache,
    recipe: &KernelRecipe,
) -> Result<Option<Part<KernelDetails>>, ImageError> {
    let wanted = recipe_hash(recipe);
    let mut best: Option<Part<KernelDetails>> = None;
    for (name, dir) in cache.entries()? {
        if !name.starts_with("kernel-") {
            continue;
        }
        // Skip (rather than fail on) parts another version wrote.
        let Ok(Some(manifest)) = read_manifest::<KernelDetails>(&dir) else {
            continue;
        };
        if manifest.details.recipe_hash != wanted {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|b| manifest.built_at_unix_ms > b.manifest.built_at_unix_ms)
        {
            best = Some(Part {
                dir,
                manifest,
                built_now: false,
            });
        }
    }
    // Re-read through the cache so a damaged part is reported, not used.
    match best {
        Some(part) => cache.load(PART, &part.manifest.key),
        None => Ok(None),
    }
}

/// Returns the kernel part, building it if needed. Without `refresh`, any
/// kernel already built from this recipe is reused without asking apt.
pub(crate) fn ensure(
    cache: &Cache,
    recipe: &KernelRecipe,
    refresh: bool,
    progress: &dyn Progress,
) -> Result<Part<KernelDetails>, ImageError> {
    if !refresh && let Some(part) = newest_cached(cache, recipe)? {
        return Ok(part);
    }
    progress.step(&format!("resolving kernel package {}", recipe.metapackage));
    let mut resolved = resolve(recipe, progress)?;
    loop {
        let key = kernel_key(recipe, &resolved);
        match cache.get_or_build(PART, &key, progress, |staging| {
            build(recipe, &resolved, staging, progress)
        }) {
            Ok(part) => return Ok(part),
            // The lists named a version the archive no longer has (a
            // security update replaced it): refresh them, and if that
            // changes the resolution, build that instead.
            // (The download already refreshed the lists once and retried.)
            // This terminates: the lists are refreshed at most once per
            // process, so a second resolution returns the same package.
            Err(err @ ImageError::Command(_)) => {
                if !host::apt_was_updated() {
                    return Err(err);
                }
                match resolve(recipe, progress) {
                    Ok(fresh) if fresh != resolved => resolved = fresh,
                    _ => return Err(err),
                }
            }
            Err(err) => return Err(err),
        }
    }
}

fn build(
    recipe: &KernelRecipe,
    resolved: &Resolved,
    staging: &Path,
    progress: &dyn Progress,
) -> Result<KernelDetails, ImageError> {
    let started = std::time::Instant::now();
    progress.step(&format!(
        "fetching kernel {} {}",
        resolved.package, resolved.version
    ));
    let work = staging.join("work");
    fs::create_dir(&work).map_err(ImageError::io("create", &work))?;
    let deb = host::apt_download(&resolved.package, &resolved.version, &work, progress)?;
    let tree = work.join("tree");
    host::dpkg_extract(&deb, &tree)?;

    let bad = |reason: String| ImageError::BadPackage {
        package: resolved.package.clone(),
        reason,
    };
    let boot = tree.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .map_err(ImageError::io("list", &boot))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| bad("it has no boot/vmlinuz-*".into()))?;
    let kernel_version = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or_else(|| bad("its vmlinuz file name is not UTF-8".into()))?
        .to_owned();
    let modules_root = tree.join("lib/modules").join(&kernel_version);
    if !modules_root.is_dir() {
        return Err(bad(format!("it has no lib/modules/{kernel_version}")));
    }

    let available = index_modules(&modules_root)?;
    let mut found = Vec::new();
    for name in recipe.modules {
        let path = available.get(*name).ok_or_else(|| ModuleError::NotFound {
            module: (*name).to_owned(),
        })?;
        if path.extension().is_none_or(|e| e != "ko") {
            return Err(ModuleError::BadObject {
                file: path.clone(),
                reason: "it is compressed; the init loads only uncompressed .ko files".into(),
            }
            .into());
        }
        let data = fs::read(path).map_err(ImageError::io("read", path))?;
        let info = parse_modinfo(&data).map_err(|reason| ModuleError::BadObject {
            file: path.clone(),
            reason,
        })?;
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.push(ModuleInfo {
            name: info.name.unwrap_or_else(|| (*name).to_owned()),
            file,
            depends: info.depends,
        });
    }
    let ordered = load_order(&found)?;

    fs::copy(&vmlinuz, staging.join(VMLINUZ)).map_err(ImageError::io("copy", &vmlinuz))?;
    let modules_dir = staging.join(MODULES_DIR);
    fs::create_dir(&modules_dir).map_err(ImageError::io("create", &modules_dir))?;
    for module in &ordered {
        let src = &available[module.name.as_str()];
        let data = fs::read(src).map_err(ImageError::io("read", src))?;
        write_synced(&modules_dir.join(&module.file), &data, 0o644)?;
    }
    crate::cache::remove_tree(&work).map_err(ImageError::io("delete", &work))?;
    progress.finished(&format!(
        "kernel {kernel_version} ready ({} modules) in {:.1} s",
        ordered.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(KernelDetails {
        recipe_version: KERNEL_RECIPE_VERSION,
        recipe_hash: recipe_hash(recipe),
        metapackage: recipe.metapackage.to_owned(),
        package: resolved.package.clone(),
        package_version: resolved.version.clone(),
        kernel_version,
        modules: ordered,
    })
}

/// Maps module names (file stem with `-` read as `_`, as the kernel does)
/// to `.ko` files under `root`.
///
/// Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are indexed too, so
/// that asking for one gives a clear error: the init loads plain `.ko`
/// files with `init_module(2)` and does not decompress.
fn index_modules(root: &Path) -> Result<HashMap<String, PathBuf>, ImageError> {
    let mut out = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(ImageError::io("list", &dir))? {
            let entry = entry.map_err(ImageError::io("list", &dir))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(ImageError::io("stat", &path))?;
            if file_type.is_dir() {
                stack.push(path);
            } else if let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
                [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
                    .iter()
                    .find_map(|suffix| n.strip_suffix(suffix))
            }) {
                out.insert(stem.replace('-', "_"), path);
            }
        }
    }
    Ok(out)
}

/// The fields of `.modinfo` the pipeline uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ModInfo {
    pub(crate) name: Option<String>,
    pub(crate) depends: Vec<String>,
}

/// Reads `name=` and `depends=` from a module's `.modinfo` section (a list
/// of NUL-terminated `key=value` strings).
pub(crate) fn parse_modinfo(module: &[u8]) -> Result<ModInfo, String> {
    let elf = Elf::parse(module)?;
    let section = elf
        .section(".modinfo")?
        .ok_or("it has no .modinfo section")?;
    Ok(parse_modinfo_section(section))
}

fn parse_modinfo_section(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for entry in section.split(|&b| b == 0) {
        let entry = String::from_utf8_lossy(entry);
        if let Some(name) = entry.strip_prefix("name=") {
            info.name = Some(name.to_owned());
        } else if let Some(deps) = entry.strip_prefix("depends=") {
            info.depends = deps
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect();
        }
    }
    info
}

/// Orders modules so each comes after everything it depends on. Among
/// modules whose dependencies are loaded, the input order wins, so the
/// result is deterministic.
pub(crate) fn load_order(modules: &[ModuleInfo]) -> Result<Vec<ModuleInfo>, ModuleError> {
    let by_name: BTreeMap<&str, &ModuleInfo> =
        modules.iter().map(|m| (m.name.as_str(), m)).collect();
    for module in modules {
        if let Some(missing) = module
            .depends
            .iter()
            .find(|d| !by_name.contains_key(d.as_str()))
        {
            return Err(ModuleError::MissingDependency {
                module: module.name.clone(),
                dependency: missing.clone(),
            });
        }
    }
    let mut placed: Vec<ModuleInfo> = Vec::with_capacity(modules.len());
    let mut remaining: Vec<&ModuleInfo> = modules.iter().collect();
    while !remaining.is_empty() {
        let ready = remaining
            .iter()
            .position(|m| {
                m.depends
                    .iter()
                    .all(|d| placed.iter().any(|p| &p.name == d))
            })
            .ok_or_else(|| ModuleError::Cycle {
                modules: remaining.iter().map(|m| m.name.clone()).collect(),
            })?;
        placed.push(remaining.remove(ready).clone());
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::synthetic_elf;

    fn module(name: &str, deps: &[&str]) -> ModuleInfo {
        ModuleInfo {
            name: name.into(),
            file: format!("{}.ko", name.replace('_', "-")),
            depends: deps.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    fn names(v: &[ModuleInfo]) -> Vec<&str> {
        v.iter().map(|m| m.name.as_str()).collect()
    }

    /// The real dependencies of the Debian 6.1 cloud kernel's modules,
    /// listed in an order that is wrong on purpose.
    fn debian_modules() -> Vec<ModuleInfo> {
        vec![
            module("virtio_rng", &["virtio", "virtio_ring"]),
            module("virtio_blk", &["virtio", "virtio_ring"]),
            module(
                "virtio_pci",
                &[
                    "virtio_ring",
                    "virtio_pci_modern_dev",
                    "virtio_pci_legacy_dev",
                    "virtio",
                ],
            ),
            module("virtio_console", &["virtio", "virtio_ring"]),
            module("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
            module("net_failover", &["failover"]),
            module("failover", &[]),
            module("virtio", &["virtio_ring"]),
            module("virtio_pci_legacy_dev", &[]),
            module("virtio_pci_modern_dev", &[]),
            module("virtio_ring", &[]),
        ]
    }

    #[test]
    fn orders_by_dependencies() {
        let order = load_order(&debian_modules()).unwrap();
        let order = names(&order);
        // Dependencies first; otherwise the input order.
        assert_eq!(
            order,
            [
                "failover",
                "net_failover",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_ring",
                "virtio",
                "virtio_rng",
                "virtio_blk",
                "virtio_pci",
                "virtio_console",
                "virtio_net",
            ]
        );
        for m in debian_modules() {
            let pos = order.iter().position(|n| *n == m.name).unwrap();
            for dep in &m.depends {
                let dep_pos = order.iter().position(|n| n == dep).unwrap();
                assert!(dep_pos < pos, "{dep} must load before {}", m.name);
            }
        }
        assert_eq!(order.len(), 11);
    }

    #[test]
    fn keeps_the_recipe_order_when_it_is_valid() {
        let recipe: Vec<_> = KERNEL
            .modules
            .iter()
            .map(|n| debian_modules().into_iter().find(|m| m.name == *n).unwrap())
            .collect();
        let order = load_order(&recipe).unwrap();
        assert_eq!(names(&order), KERNEL.modules);
    }

    #[test]
    fn reports_missing_dependencies() {
        let err = load_order(&[
            module("virtio_blk", &["virtio"]),
            module("virtio_ring", &[]),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            ModuleError::MissingDependency {
                module: "virtio_blk".into(),
                dependency: "virtio".into()
            }
        );
        assert!(err.to_string().contains("add it to the kernel recipe"));
    }

    #[test]
    fn reports_cycles() {
        let err = load_order(&[
            module("a", &["b"]),
            module("b", &["c"]),
            module("c", &["a"]),
            module("d", &[]),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            ModuleError::Cycle {
                modules: vec!["a".into(), "b".into(), "c".into()]
            }
        );
    }

    #[test]
    fn parses_modinfo_from_elf() {
        let modinfo = b"license=GPL\0depends=virtio,virtio_ring\0retpoline=Y\0name=virtio_rng\0vermagic=6.1.0\0";
        let elf = synthetic_elf(&[(".text", b"\x90\x90"), (".modinfo", modinfo)], None);
        assert_eq!(
            parse_modinfo(&elf).unwrap(),
            ModInfo {
                name: Some("virtio_rng".into()),
                depends: vec!["virtio".into(), "virtio_ring".into()],
            }
        );
        let leaf = synthetic_elf(&[(".modinfo", b"depends=\0name=virtio_ring\0")], None);
        assert_eq!(parse_modinfo(&leaf).unwrap().depends, Vec::<String>::new());
        let none = synthetic_elf(&[(".text", b"")], None);
        assert!(parse_modinfo(&none).unwrap_err().contains(".modinfo"));
        assert!(parse_modinfo(b"not elf").is_err());
    }

    #[test]
    fn key_is_stable_and_sensitive() {
        let r = Resolved {
            package: "linux-image-6.1.0-56-cloud-amd64".into(),
            version: "6.1.192-2".into(),
        };
        let k = kernel_key(&KERNEL, &r);
        assert_eq!(k, kernel_key(&KERNEL, &r.clone()));
        let newer = Resolved {
            version: "6.1.193-1".into(),
            ..r.clone()
        };
        assert_ne!(k, kernel_key(&KERNEL, &newer));
        let other_pkg = Resolved {
            package: "linux-image-6.1.0-57-cloud-amd64".into(),
            ..r.clone()
        };
        assert_ne!(k, kernel_key(&KERNEL, &other_pkg));
        let fewer = KernelRecipe {
            modules: &KERNEL.modules[..7],
            ..KERNEL
        };
        assert_ne!(k, kernel_key(&fewer, &r));
        assert_ne!(recipe_hash(&KERNEL), recipe_hash(&fewer));
        let other_meta = KernelRecipe {
            metapackage: "linux-image-amd64",
            ..KERNEL
        };
        assert_ne!(k, kernel_key(&other_meta, &r));
    }
}
