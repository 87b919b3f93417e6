//! The file names a PXE client asks a TFTP server for (issue 13,
//! `docs/boot.md`), parsed into what they say about the host.
//!
//! pxelinux 6.04 asks for its configuration under these names, in this
//! order, and takes the first the server has:
//!
//! 1. `pxelinux.cfg/<UUID>`: the client's SMBIOS UUID, lower-case with
//!    dashes, in the order the firmware sent it over DHCP (option 97).
//!    That order has the first three groups byte-swapped against the one
//!    `dmidecode` prints (SMBIOS 2.6 stores them little-endian), so both
//!    readings are candidates ([`Name::uuid_candidates`]). pxelinux skips
//!    this name when the UUID is missing (about one client in eight in
//!    the field sends none).
//! 2. `pxelinux.cfg/01-<mac>`: `01` is the ARP hardware type (Ethernet),
//!    then the MAC lower-case with dashes.
//! 3. `pxelinux.cfg/<HEX>`: the client's IPv4 address as eight upper-case
//!    hex digits, then shortened one digit at a time (`0A010707`,
//!    `0A01070`, … `0`), so one file can serve a subnet.
//! 4. `pxelinux.cfg/default`.
//!
//! Everything else is a plain file of the image root ([`Name::File`]),
//! checked by [`clean_path`]: TFTP paths are untrusted input.

use uuid::Uuid;

/// The directory pxelinux reads its configuration from.
pub const CONFIG_DIR: &str = "pxelinux.cfg";

/// The longest path a client may ask for.
pub const MAX_PATH: usize = 255;

/// What a requested file name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// `pxelinux.cfg/<UUID>`, as sent.
    Uuid(Uuid),
    /// `pxelinux.cfg/01-<mac>`.
    Mac([u8; 6]),
    /// `pxelinux.cfg/<HEX>`: the leading `bits` bits of an IPv4 address
    /// (`bits` = 4 × the digits given).
    IpPrefix { addr: u32, bits: u8 },
    /// `pxelinux.cfg/default`.
    Default,
    /// Any other file, as a clean relative path.
    File(String),
}

/// Why a requested name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the path is empty")]
    Empty,
    #[error("the path is longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("the path holds a NUL, a backslash or a control character")]
    BadCharacter,
    #[error("the path leaves the image root (`..`)")]
    Escapes,
}

/// A requested path made relative and clean: leading slashes dropped
/// (pxelinux and iPXE ask for `/pxelinux.cfg/…` as often as without),
/// `.` and empty components skipped; `..`, backslashes, NUL and control
/// characters, and over-long paths refused. The result never leaves the
/// root it is joined to (symlinks are the server's to check).
pub fn clean_path(raw: &str) -> Result<String, Refused> {
    if raw.len() > MAX_PATH {
        return Err(Refused::TooLong);
    }
    if raw.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(Refused::BadCharacter);
    }
    let mut parts = vec![];
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(Refused::Escapes),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(Refused::Empty);
    }
    Ok(parts.join("/"))
}

impl Name {
    /// What the requested path `raw` names.
    pub fn parse(raw: &str) -> Result<Name, Refused> {
        let path = clean_path(raw)?;
        let Some(file) = path
            .strip_prefix(CONFIG_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|f| !f.contains('/'))
        else {
            return Ok(Name::File(path));
        };
        if file == "default" {
            return Ok(Name::Default);
        }
        if let Some(mac) = file.strip_prefix("01-").and_then(parse_dashed_mac) {
            return Ok(Name::Mac(mac));
        }
        if file.len() == 36
            && let Ok(u) = Uuid::parse_str(file)
        {
            return Ok(Name::Uuid(u));
        }
        if (1..=8).contains(&file.len()) && file.bytes().all(|b| b.is_ascii_hexdigit()) {
            let digits = file.len() as u32;
            let value = u32::from_str_radix(file, 16).map_err(|_| Refused::BadCharacter)?;
            return Ok(Name::IpPrefix {
                addr: value << (32 - 4 * digits),
                bits: (4 * digits) as u8,
            });
        }
        Ok(Name::File(path))
    }

    /// For [`Name::Uuid`]: the UUIDs a host's `netbootGUID` may hold for
    /// it, the one sent first and then its first three groups
    /// byte-swapped (what `dmidecode` prints for the same machine).
    pub fn uuid_candidates(&self) -> Vec<Uuid> {
        match self {
            Name::Uuid(u) => {
                let swapped = swap_groups(*u);
                if swapped == *u {
                    vec![*u]
                } else {
                    vec![*u, swapped]
                }
            }
            _ => vec![],
        }
    }
}

/// A UUID with its first three groups byte-swapped (SMBIOS's
/// little-endian fields read as big-endian, or back).
pub fn swap_groups(u: Uuid) -> Uuid {
    let b = u.as_bytes();
    Uuid::from_bytes([
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15],
    ])
}

/// `aa-bb-cc-dd-ee-ff`, any case.
fn parse_dashed_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split('-');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The names pxelinux asks for, in its order, for a client with `uuid`
/// (as it sends it), `mac` and `ip`: what a server (and its tests)
/// expect to see.
pub fn pxelinux_names(uuid: Option<Uuid>, mac: [u8; 6], ip: std::net::Ipv4Addr) -> Vec<String> {
    let mut out = vec![];
    if let Some(u) = uuid {
        out.push(format!("{CONFIG_DIR}/{}", u.hyphenated()));
    }
    out.push(format!(
        "{CONFIG_DIR}/01-{}",
        mac.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join("-")
    ));
    let hex = format!("{:08X}", u32::from(ip));
    for n in (1..=8).rev() {
        out.push(format!("{CONFIG_DIR}/{}", &hex[..n]));
    }
    out.push(format!("{CONFIG_DIR}/default"));
    out
}

/// Whether `ip` is within a [`Name::IpPrefix`].
pub fn prefix_covers(addr: u32, bits: u8, ip: std::net::Ipv4Addr) -> bool {
    if bits == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(bits.min(32)));
    (u32::from(ip) & mask) == (addr & mask)
}

/// A build, as its `cairnImage` entry describes it. Paths are relative
/// to the image root. `modules` keep the order the entry holds them in:
/// the order of the add or modify that wrote them, which Cairn keeps and
/// replicates (each value carries its position in the change that added
/// it); a later `add: cairnModule` appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub kernel: String,
    pub modules: Vec<String>,
    pub append: String,
}

impl Image {
    /// The build of a `cairnImage` entry, `get` giving an attribute's
    /// values; its paths are checked as requested paths are.
    pub fn from_entry(get: impl Fn(&str) -> Vec<String>) -> Result<Image, String> {
        let one = |a: &str| get(a).into_iter().next();
        let name = one("cn").ok_or("the image has no cn")?;
        let path = |p: String| clean_path(&p).map_err(|e| format!("image {name}: path {p:?}: {e}"));
        let kernel =
            path(one("cairnKernel").ok_or_else(|| format!("image {name} has no cairnKernel"))?)?;
        let modules = get("cairnModule")
            .into_iter()
            .map(path)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Image {
            kernel,
            modules,
            append: one("cairnAppend").unwrap_or_default(),
            name,
        })
    }
}

/// The values a boot file may use, as `${name}`: the host's own (its
/// `hostname`, `mac`, `uuid`, `ip`, `dn`, its cluster), the DNS `domain`
/// its `_cairn._tcp` SRV record is in, the `image`, and the `server`
/// that rendered it. A name not given is left as written, so iPXE's own
/// variables (`${net0/mac}`) reach iPXE.
pub type Vars = std::collections::BTreeMap<&'static str, String>;

/// `text` with every `${name}` of `vars` replaced by its value.
pub fn substitute(text: &str, vars: &Vars) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find('}') {
            Some(end) if vars.contains_key(&after[..end]) => {
                out.push_str(&vars[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A value as one token of a boot file: line breaks could add commands.
fn token(v: &str) -> String {
    v.replace(['\n', '\r'], " ")
}

/// Whom a boot file is for, for its first comment line.
fn for_whom(vars: &Vars) -> String {
    token(
        vars.get("dn")
            .map(String::as_str)
            .unwrap_or("an unknown host"),
    )
}

/// A pxelinux `LABEL` that boots `image`: its kernel, its modules as the
/// initrd, its command line with `vars` substituted.
fn pxelinux_label(label: &str, image: &Image, vars: &Vars) -> String {
    let mut out = format!("LABEL {label}\n  KERNEL {}\n", token(&image.kernel));
    if !image.modules.is_empty() {
        out.push_str(&format!("  INITRD {}\n", token(&image.modules.join(","))));
    }
    let append = token(&substitute(&image.append, vars));
    if !append.trim().is_empty() {
        out.push_str(&format!("  APPEND {append}\n"));
    }
    out
}

/// The iPXE commands that boot `image` with its files from `base`.
fn ipxe_boot(image: &Image, vars: &Vars, base: &str) -> String {
    let mut out = format!(
        "kernel {base}/{} {}\n",
        token(&image.kernel),
        token(&substitute(&image.append, vars))
    );
    for m in &image.modules {
        out.push_str(&format!("initrd {base}/{}\n", token(m)));
    }
    out.push_str("boot\n");
    out
}

/// The pxelinux configuration that boots `image` at once, its kernel
/// arguments with `vars` substituted.
pub fn pxelinux_config(image: &Image, vars: &Vars) -> String {
    format!(
        "# {} for {}\nDEFAULT cairn\nPROMPT 0\nTIMEOUT 1\n{}",
        token(&image.name),
        for_whom(vars),
        pxelinux_label("cairn", image, vars)
    )
}

/// The iPXE script that boots `image` with its files from `base` (the
/// node's HTTP URL of the image root, no trailing slash).
pub fn ipxe_script(image: &Image, vars: &Vars, base: &str) -> String {
    format!(
        "#!ipxe\n# {} for {}\n{}",
        token(&image.name),
        for_whom(vars),
        ipxe_boot(image, vars, base)
    )
}

/// One `cairnFileSha256` value of a build: a file of the image root and
/// its SHA-256, as `sha256sum` prints them (`<64 hex digits>  <path>`).
/// Nodes fetch and serve a build's files only when their content has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Lower-case hex.
    pub sha256: String,
    /// Relative to the image root, clean ([`clean_path`]).
    pub path: String,
}

impl FileDigest {
    pub fn parse(v: &str) -> Result<FileDigest, String> {
        let (hex, path) = v
            .split_once(' ')
            .ok_or_else(|| format!("{v:?} is not `<sha256>  <path>`"))?;
        let sha256 = sha256_hex(hex)?;
        let path = path.trim_start_matches([' ', '*']);
        let path = clean_path(path).map_err(|e| format!("path {path:?}: {e}"))?;
        Ok(FileDigest { sha256, path })
    }

    /// As stored.
    pub fn value(&self) -> String {
        format!("{}  {}", self.sha256, self.path)
    }
}

/// A SHA-256 in lower-case hex, checked.
pub fn sha256_hex(v: &str) -> Result<String, String> {
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(format!("{v:?} is not a SHA-256 (64 hex digits)"))
    }
}

/// The hex SHA-256 of everything `r` reads.
pub fn sha256_of(mut r: impl std::io::Read) -> std::io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match r.read(&mut buf)? {
            0 => break,
            n => h.update(&buf[..n]),
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A piece of a file sent to a node by `cairn image add` (LDAP extended
/// operation 1.3.6.1.4.1.32473.7.4.4, administrators only). Its value is
/// `<path> NUL <offset> NUL <sha256 or empty> NUL <bytes>`: the path in
/// the image root, where the bytes go in the file, and, on the last
/// piece only, the SHA-256 the whole file must have before the node puts
/// it in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub path: String,
    pub offset: u64,
    pub sha256: Option<String>,
    pub data: Vec<u8>,
}

impl Upload {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = format!(
            "{}\0{}\0{}\0",
            self.path,
            self.offset,
            self.sha256.as_deref().unwrap_or("")
        )
        .into_bytes();
        v.extend_from_slice(&self.data);
        v
    }

    pub fn decode(v: &[u8]) -> Result<Upload, String> {
        let mut parts = v.splitn(4, |b| *b == 0);
        let mut text = |what: &str| -> Result<String, String> {
            let p = parts.next().ok_or_else(|| format!("no {what}"))?;
            String::from_utf8(p.to_vec()).map_err(|_| format!("the {what} is not UTF-8"))
        };
        let path = clean_path(&text("path")?).map_err(|e| e.to_string())?;
        let offset = text("offset")?
            .parse()
            .map_err(|_| "the offset is not a number".to_string())?;
        let sha = text("SHA-256")?;
        let sha256 = if sha.is_empty() {
            None
        } else {
            Some(sha256_hex(&sha)?)
        };
        let data = parts.next().ok_or("no data")?.to_vec();
        Ok(Upload {
            path,
            offset,
            sha256,
            data,
        })
    }
}

/// Whether a build's name can be a menu label: pxelinux labels and iPXE
/// goto labels are single words.
fn label_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "local"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// How long the menu for an unknown host waits before booting the local
/// disk, in seconds.
pub const MENU_WAIT_SECS: u32 = 10;

/// The pxelinux configuration for a host no entry and no deploy rule
/// knows (`pxelinux.cfg/default`): a prompt listing `images` by name, the
/// local disk after [`MENU_WAIT_SECS`] (an unknown machine never starts
/// an installer by itself). Builds whose name is not a single word are
/// left out.
pub fn pxelinux_menu(images: &[Image], vars: &Vars) -> String {
    let mut out = format!(
        "# Cairn: a host no entry and no deploy rule knows\nDEFAULT local\nPROMPT 1\nTIMEOUT {}\n\
         SAY This host is unknown to Cairn (no host entry, no deploy rule matched it).\n\
         SAY Type a build's name to boot it; the local disk boots in {MENU_WAIT_SECS} s:\n\
         SAY   local\n",
        MENU_WAIT_SECS * 10
    );
    let usable: Vec<&Image> = images.iter().filter(|i| label_safe(&i.name)).collect();
    for i in &usable {
        out.push_str(&format!("SAY   {}\n", i.name));
    }
    out.push_str("LABEL local\n  LOCALBOOT 0\n");
    for i in usable {
        out.push_str(&pxelinux_label(&i.name, i, vars));
    }
    out
}

/// The iPXE menu for a host no entry and no deploy rule knows: the same
/// choice as [`pxelinux_menu`], files from `base`.
pub fn ipxe_menu(images: &[Image], vars: &Vars, base: &str) -> String {
    let usable: Vec<&Image> = images.iter().filter(|i| label_safe(&i.name)).collect();
    let mut out = String::from(
        "#!ipxe\n# Cairn: a host no entry and no deploy rule knows\n\
         menu This host is unknown to Cairn: boot a build, or the local disk\n\
         item local Local disk\n",
    );
    for i in &usable {
        out.push_str(&format!("item {0} {0}\n", i.name));
    }
    out.push_str(&format!(
        "choose --default local --timeout {} target && goto ${{target}} || goto local\n\
         :local\nexit\n",
        MENU_WAIT_SECS * 1000
    ));
    for i in usable {
        out.push_str(&format!(":{}\n{}", i.name, ipxe_boot(i, vars, base)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn build(name: &str) -> Image {
        Image {
            name: name.into(),
            kernel: format!("{name}/vmlinuz"),
            modules: vec![format!("{name}/a.gz"), format!("{name}/b.gz")],
            append: "console=ttyS0 ip=${ip}".into(),
        }
    }

    #[test]
    fn file_digests_read_as_sha256sum_prints_them() {
        let hex = "a".repeat(64);
        let d = FileDigest::parse(&format!("{}  v1/vmlinuz", hex.to_uppercase())).unwrap();
        assert_eq!(
            (d.sha256.as_str(), d.path.as_str()),
            (hex.as_str(), "v1/vmlinuz")
        );
        assert_eq!(d.value(), format!("{hex}  v1/vmlinuz"));
        // Binary mode's `*`.
        assert_eq!(
            FileDigest::parse(&format!("{hex} *v1/a")).unwrap().path,
            "v1/a"
        );
        for bad in [
            hex.clone(),
            "abc  v1/a".to_string(),
            format!("{hex}  ../etc/passwd"),
            format!("{}  v1/a", "g".repeat(64)),
        ] {
            assert!(FileDigest::parse(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            sha256_of(&b"abc"[..]).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn uploads_round_trip_and_bad_ones_are_refused() {
        let u = Upload {
            path: "v1/initrd".into(),
            offset: 1 << 20,
            sha256: Some("b".repeat(64)),
            data: vec![0, 1, 2, 0, 255],
        };
        assert_eq!(Upload::decode(&u.encode()).unwrap(), u);
        let mid = Upload {
            sha256: None,
            ..u.clone()
        };
        assert_eq!(Upload::decode(&mid.encode()).unwrap(), mid);
        for bad in [
            &b"../x\x000\x00\x00data"[..],
            b"v1/a\x00-1\x00\x00",
            b"v1/a\x000\x00nothex\x00",
            b"v1/a\x000",
            b"\xff\x000\x00\x00",
        ] {
            assert!(Upload::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unknown_host_gets_a_menu_of_the_builds_that_boots_the_local_disk_by_default() {
        let vars = Vars::from([("ip", "10.1.7.7".to_string())]);
        let images = [build("v1"), build("bad name"), build("local"), build("v2")];
        let m = pxelinux_menu(&images, &vars);
        assert!(m.contains("DEFAULT local\nPROMPT 1\nTIMEOUT 100\n"), "{m}");
        assert!(m.contains("LABEL local\n  LOCALBOOT 0\n"), "{m}");
        assert!(
            m.contains(
                "LABEL v2\n  KERNEL v2/vmlinuz\n  INITRD v2/a.gz,v2/b.gz\n  APPEND console=ttyS0 ip=10.1.7.7\n"
            ),
            "{m}"
        );
        assert!(m.contains("SAY   v1\n") && m.contains("LABEL v1\n"), "{m}");
        // Names that are not one word, or that would shadow `local`, are left out.
        assert!(
            !m.contains("bad name") && m.matches("LABEL local").count() == 1,
            "{m}"
        );

        let i = ipxe_menu(&images, &vars, "http://n1:8080/images");
        assert!(i.starts_with("#!ipxe\n"), "{i}");
        assert!(i.contains("item v1 v1\nitem v2 v2\n"), "{i}");
        assert!(
            i.contains("choose --default local --timeout 10000 target"),
            "{i}"
        );
        assert!(
            i.contains(
                ":v2\nkernel http://n1:8080/images/v2/vmlinuz console=ttyS0 ip=10.1.7.7\n\
                 initrd http://n1:8080/images/v2/a.gz\ninitrd http://n1:8080/images/v2/b.gz\nboot\n"
            ),
            "{i}"
        );
        assert!(!i.contains("bad name"), "{i}");
    }

    #[test]
    fn every_name_pxelinux_asks_for_parses_in_its_order() {
        let uuid = Uuid::parse_str("4c4c4544-0051-3510-8057-b7c04f333231").unwrap();
        let mac = [0x00, 0x50, 0x56, 0x01, 0x00, 0x01];
        let ip = Ipv4Addr::new(10, 1, 7, 7);
        let names = pxelinux_names(Some(uuid), mac, ip);
        assert_eq!(names.len(), 1 + 1 + 8 + 1);
        assert_eq!(
            names[0],
            "pxelinux.cfg/4c4c4544-0051-3510-8057-b7c04f333231"
        );
        assert_eq!(names[1], "pxelinux.cfg/01-00-50-56-01-00-01");
        assert_eq!(names[2], "pxelinux.cfg/0A010707");
        assert_eq!(names[9], "pxelinux.cfg/0");
        assert_eq!(names[10], "pxelinux.cfg/default");
        let parsed: Vec<Name> = names.iter().map(|n| Name::parse(n).unwrap()).collect();
        assert_eq!(parsed[0], Name::Uuid(uuid));
        assert_eq!(parsed[1], Name::Mac(mac));
        assert_eq!(
            parsed[2],
            Name::IpPrefix {
                addr: 0x0A01_0707,
                bits: 32
            }
        );
        assert_eq!(
            parsed[5],
            Name::IpPrefix {
                addr: 0x0A01_0000,
                bits: 20
            }
        );
        assert_eq!(parsed[10], Name::Default);
        for p in &parsed[2..10] {
            let Name::IpPrefix { addr, bits } = p else {
                panic!("{p:?}")
            };
            assert!(prefix_covers(*addr, *bits, ip), "{p:?}");
            assert!(
                *bits < 8 || !prefix_covers(*addr, *bits, Ipv4Addr::new(192, 168, 0, 1)),
                "{p:?}"
            );
        }
        // Without a UUID the first name is the MAC's.
        assert_eq!(pxelinux_names(None, mac, ip)[0], names[1]);
        // Leading slashes, upper-case MACs and UUIDs are the same names.
        assert_eq!(
            Name::parse("/pxelinux.cfg/01-00-50-56-01-00-01").unwrap(),
            Name::Mac(mac)
        );
        assert_eq!(
            Name::parse("pxelinux.cfg/01-00-50-56-0A-0B-0C").unwrap(),
            Name::Mac([0, 0x50, 0x56, 0x0a, 0x0b, 0x0c])
        );
        assert_eq!(
            Name::parse("pxelinux.cfg/4C4C4544-0051-3510-8057-B7C04F333231").unwrap(),
            Name::Uuid(uuid)
        );
    }

    #[test]
    fn a_uuid_is_looked_up_as_sent_and_byte_swapped() {
        let sent = Uuid::parse_str("44454c4c-5100-1035-8057-b7c04f333231").unwrap();
        let dmidecode = Uuid::parse_str("4c4c4544-0051-3510-8057-b7c04f333231").unwrap();
        assert_eq!(swap_groups(sent), dmidecode);
        assert_eq!(swap_groups(dmidecode), sent);
        assert_eq!(Name::Uuid(sent).uuid_candidates(), vec![sent, dmidecode]);
        let symmetric = Uuid::parse_str("00000000-0000-0000-8057-b7c04f333231").unwrap();
        assert_eq!(Name::Uuid(symmetric).uuid_candidates(), vec![symmetric]);
        assert!(Name::Default.uuid_candidates().is_empty());
    }

    #[test]
    fn other_files_are_clean_relative_paths_and_hostile_ones_are_refused() {
        assert_eq!(
            Name::parse("/images/esxi-8/./mboot.c32").unwrap(),
            Name::File("images/esxi-8/mboot.c32".into())
        );
        assert_eq!(
            Name::parse("pxelinux.cfg/nested/default").unwrap(),
            Name::File("pxelinux.cfg/nested/default".into())
        );
        // Not a MAC, not a UUID, not hex: a file under pxelinux.cfg.
        assert_eq!(
            Name::parse("pxelinux.cfg/01-zz-50-56-01-00-01").unwrap(),
            Name::File("pxelinux.cfg/01-zz-50-56-01-00-01".into())
        );
        assert_eq!(
            Name::parse("pxelinux.cfg/0A0107070").unwrap(),
            Name::File("pxelinux.cfg/0A0107070".into())
        );
        for (raw, why) in [
            ("../etc/passwd", Refused::Escapes),
            ("/images/../../etc/passwd", Refused::Escapes),
            ("images\\..\\x", Refused::BadCharacter),
            ("a\0b", Refused::BadCharacter),
            ("a\nb", Refused::BadCharacter),
            ("", Refused::Empty),
            ("///", Refused::Empty),
        ] {
            assert_eq!(Name::parse(raw), Err(why), "{raw:?}");
        }
        let long = "a/".repeat(200);
        assert_eq!(Name::parse(&long), Err(Refused::TooLong));
    }

    fn image() -> Image {
        let get = |a: &str| -> Vec<String> {
            match a {
                "cn" => vec!["linux-6.1".into()],
                "cairnKernel" => vec!["linux-6.1/vmlinuz".into()],
                "cairnModule" => vec!["linux-6.1/initrd.gz".into(), "linux-6.1/extra.cpio".into()],
                "cairnAppend" => vec![
                    "console=ttyS0 cairn.host=${hostname} cairn.domain=${domain} ip=${net0/ip}"
                        .into(),
                ],
                _ => vec![],
            }
        };
        Image::from_entry(get).unwrap()
    }

    fn vars() -> Vars {
        Vars::from([
            ("hostname", "esx-001".to_string()),
            ("domain", "example.com".to_string()),
            ("dn", "cn=esx-001,cn=prod-a,dc=example,dc=com".to_string()),
        ])
    }

    #[test]
    fn a_build_renders_for_pxelinux_and_ipxe_with_the_hosts_values() {
        let img = image();
        assert_eq!(img.modules, ["linux-6.1/initrd.gz", "linux-6.1/extra.cpio"]);
        let cfg = pxelinux_config(&img, &vars());
        assert_eq!(
            cfg,
            "# linux-6.1 for cn=esx-001,cn=prod-a,dc=example,dc=com\nDEFAULT cairn\nPROMPT 0\nTIMEOUT 1\nLABEL cairn\n  KERNEL linux-6.1/vmlinuz\n  INITRD linux-6.1/initrd.gz,linux-6.1/extra.cpio\n  APPEND console=ttyS0 cairn.host=esx-001 cairn.domain=example.com ip=${net0/ip}\n"
        );
        let script = ipxe_script(&img, &vars(), "http://10.0.2.2:8080/images");
        assert!(script.starts_with("#!ipxe\n"), "{script}");
        assert!(script.contains("kernel http://10.0.2.2:8080/images/linux-6.1/vmlinuz console=ttyS0 cairn.host=esx-001"), "{script}");
        assert!(script.contains("initrd http://10.0.2.2:8080/images/linux-6.1/initrd.gz\ninitrd http://10.0.2.2:8080/images/linux-6.1/extra.cpio\nboot\n"), "{script}");
    }

    #[test]
    fn substitution_leaves_unknown_names_and_cannot_add_lines() {
        let v = vars();
        assert_eq!(
            substitute("${hostname}.${domain} ${x} ${ ${", &v),
            "esx-001.example.com ${x} ${ ${"
        );
        let mut evil = vars();
        evil.insert("hostname", "h\nKERNEL evil".into());
        let img = image();
        let cfg = pxelinux_config(&img, &evil);
        assert_eq!(
            cfg.lines()
                .filter(|l| l.trim_start().starts_with("KERNEL"))
                .count(),
            1,
            "{cfg}"
        );
        let bad = Image::from_entry(|a| match a {
            "cn" => vec!["x".into()],
            "cairnKernel" => vec!["../../etc/passwd".into()],
            _ => vec![],
        });
        assert!(bad.unwrap_err().contains("leaves the image root"));
    }
}
