//! Just enough ELF64 reading for two questions: what is in a kernel
//! module's `.modinfo` section, and is the guest agent a static x86-64
//! executable.
//!
//! Both are a few header fields and one table walk, so a bounds-checked
//! reader here is smaller than a dependency (and `modinfo(8)` is not on the
//! host). Every read is checked: a malformed file yields an error, never a
//! panic.

/// What an ELF file is, as far as the image pipeline cares.
#[derive(Debug)]
pub(crate) struct Elf<'a> {
    data: &'a [u8],
    /// `e_machine`: 62 is x86-64.
    pub(crate) machine: u16,
    phoff: usize,
    phentsize: usize,
    phnum: usize,
    shoff: usize,
    shentsize: usize,
    shnum: usize,
    shstrndx: usize,
}

/// `e_machine` of x86-64.
pub(crate) const EM_X86_64: u16 = 62;
const PT_INTERP: u32 = 3;

fn u16_at(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(d: &[u8], off: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(
        d.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
    .ok()
}

impl<'a> Elf<'a> {
    /// Parses the header of a little-endian ELF64 file.
    pub(crate) fn parse(data: &'a [u8]) -> Result<Self, String> {
        if data.get(..4) != Some(b"\x7fELF") {
            return Err("not an ELF file".into());
        }
        if data.get(4) != Some(&2) || data.get(5) != Some(&1) {
            return Err("not a little-endian 64-bit ELF file".into());
        }
        let short = || "ELF header is truncated".to_string();
        Ok(Self {
            data,
            machine: u16_at(data, 0x12).ok_or_else(short)?,
            phoff: u64_at(data, 0x20).ok_or_else(short)?,
            shoff: u64_at(data, 0x28).ok_or_else(short)?,
            phentsize: usize::from(u16_at(data, 0x36).ok_or_else(short)?),
            phnum: usize::from(u16_at(data, 0x38).ok_or_else(short)?),
            shentsize: usize::from(u16_at(data, 0x3a).ok_or_else(short)?),
            shnum: usize::from(u16_at(data, 0x3c).ok_or_else(short)?),
            shstrndx: usize::from(u16_at(data, 0x3e).ok_or_else(short)?),
        })
    }

    /// The contents of the section called `name`, if there is one.
    pub(crate) fn section(&self, name: &str) -> Result<Option<&'a [u8]>, String> {
        if self.shnum == 0 {
            return Ok(None);
        }
        if self.shentsize < 0x40 {
            return Err("section header entries are too small".into());
        }
        let header = |index: usize| -> Result<(u32, &'a [u8]), String> {
            let base = index
                .checked_mul(self.shentsize)
                .and_then(|o| o.checked_add(self.shoff))
                .ok_or("section header offset overflows")?;
            let bad = || format!("section header {index} is out of bounds");
            let name = u32_at(self.data, base).ok_or_else(bad)?;
            let sh_type = u32_at(self.data, base + 4).ok_or_else(bad)?;
            let offset = u64_at(self.data, base + 0x18).ok_or_else(bad)?;
            let size = u64_at(self.data, base + 0x20).ok_or_else(bad)?;
            // SHT_NOBITS occupies no file bytes.
            let contents = if sh_type == 8 {
                &[][..]
            } else {
                offset
                    .checked_add(size)
                    .and_then(|end| self.data.get(offset..end))
                    .ok_or_else(|| format!("section {index} lies outside the file"))?
            };
            Ok((name, contents))
        };
        let (_, names) = header(self.shstrndx)?;
        for index in 0..self.shnum {
            let (name_off, contents) = header(index)?;
            let section_name = names
                .get(name_off as usize..)
                .and_then(|s| s.split(|&b| b == 0).next())
                .ok_or_else(|| format!("section {index} has a name outside the string table"))?;
            if section_name == name.as_bytes() {
                return Ok(Some(contents));
            }
        }
        Ok(None)
    }

    /// The program interpreter (`PT_INTERP`), present only in dynamically
    /// linked executables.
    pub(crate) fn interpreter(&self) -> Result<Option<String>, String> {
        if self.phnum == 0 {
            return Ok(None);
        }
        if self.phentsize < 0x38 {
            return Err("program header entries are too small".into());
        }
        for index in 0..self.phnum {
            let base = index
                .checked_mul(self.phentsize)
                .and_then(|o| o.checked_add(self.phoff))
                .ok_or("program header offset overflows")?;
            let bad = || format!("program header {index} is out of bounds");
            if u32_at(self.data, base).ok_or_else(bad)? == PT_INTERP {
                let offset = u64_at(self.data, base + 8).ok_or_else(bad)?;
                let size = u64_at(self.data, base + 0x20).ok_or_else(bad)?;
                let bytes = offset
                    .checked_add(size)
                    .and_then(|end| self.data.get(offset..end))
                    .ok_or("the interpreter path lies outside the file")?;
                let path = bytes.split(|&b| b == 0).next().unwrap_or_default();
                return Ok(Some(String::from_utf8_lossy(path).into_owned()));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 file with the given sections (name, contents) and an
    /// optional `PT_INTERP` program header, for tests.
    pub(crate) fn synthetic_elf(sections: &[(&str, &[u8])], interp: Option<&str>) -> Vec<u8> {
        let mut names = vec![0u8];
        let mut name_offsets = Vec::new();
        for (name, _) in sections {
            name_offsets.push(names.len() as u32);
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let shstrtab_name = names.len() as u32;
        names.extend_from_slice(b".shstrtab\0");

        let mut out = vec![0u8; 0x40];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        // Program header (one PT_INTERP) right after the ELF header.
        let interp_bytes = interp.map(|i| {
            let mut v = i.as_bytes().to_vec();
            v.push(0);
            v
        });
        let phoff = out.len();
        if interp_bytes.is_some() {
            out.resize(phoff + 0x38, 0);
        }
        let mut contents_offsets = Vec::new();
        for (_, contents) in sections {
            contents_offsets.push(out.len());
            out.extend_from_slice(contents);
        }
        let names_offset = out.len();
        out.extend_from_slice(&names);
        if let Some(bytes) = &interp_bytes {
            let off = out.len();
            out.extend_from_slice(bytes);
            out[phoff..phoff + 4].copy_from_slice(&PT_INTERP.to_le_bytes());
            out[phoff + 8..phoff + 16].copy_from_slice(&(off as u64).to_le_bytes());
            out[phoff + 0x20..phoff + 0x28].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            out[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
            out[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
            out[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        }
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len();
        let mut header = |name: u32, offset: usize, size: usize| {
            let mut h = [0u8; 0x40];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            out.extend_from_slice(&h);
        };
        header(0, 0, 0); // the null section
        for (i, (_, contents)) in sections.iter().enumerate() {
            header(name_offsets[i], contents_offsets[i], contents.len());
        }
        header(shstrtab_name, names_offset, names.len());
        let shnum = sections.len() as u16 + 2;
        out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&shnum.to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&(shnum - 1).to_le_bytes());
        out
    }

    #[test]
    fn finds_sections_by_name() {
        let elf = synthetic_elf(
            &[(".text", b"code"), (".modinfo", b"name=x\0depends=\0")],
            None,
        );
        let parsed = Elf::parse(&elf).unwrap();
        assert_eq!(parsed.machine, EM_X86_64);
        assert_eq!(
            parsed.section(".modinfo").unwrap(),
            Some(&b"name=x\0depends=\0"[..])
        );
        assert_eq!(parsed.section(".text").unwrap(), Some(&b"code"[..]));
        assert_eq!(parsed.section(".nothing").unwrap(), None);
        assert_eq!(parsed.interpreter().unwrap(), None);
    }

    #[test]
    fn reports_the_interpreter() {
        let elf = synthetic_elf(&[], Some("/lib64/ld-linux-x86-64.so.2"));
        let parsed = Elf::parse(&elf).unwrap();
        assert_eq!(
            parsed.interpreter().unwrap().as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(Elf::parse(b"#!/bin/sh\n").is_err());
        assert!(Elf::parse(b"\x7fELF\x01\x01").is_err());
        let elf = synthetic_elf(&[(".modinfo", b"x")], None);
        for len in 0..elf.len() {
            if let Ok(parsed) = Elf::parse(&elf[..len]) {
                let _ = parsed.section(".modinfo");
                let _ = parsed.interpreter();
            }
        }
        let mut corrupt = elf.clone();
        corrupt[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Elf::parse(&corrupt).unwrap().section(".modinfo").is_err());
    }

    #[test]
    fn reads_real_binaries_if_present() {
        // /bin/sh on the host is dynamically linked on Debian.
        if let Ok(data) = std::fs::read("/bin/sh") {
            let parsed = Elf::parse(&data).unwrap();
            assert!(parsed.interpreter().unwrap().is_some());
            assert!(parsed.section(".text").unwrap().is_some());
        }
    }
}
