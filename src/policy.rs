//! Platforms, platform classes and the multi-login policies (OpenIM's numbering).
//!
//! Pure decisions only: given a user's existing sessions and a new login, which of the old ones
//! must go. It must not touch the registry, sockets or queues; the register role applies the
//! decision.

use std::fmt;
use std::str::FromStr;

/// A client platform, numbered as OpenIM numbers them (`platformID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Platform {
    /// 1
    Ios = 1,
    /// 2
    Android = 2,
    /// 3
    Windows = 3,
    /// 4
    Osx = 4,
    /// 5
    Web = 5,
    /// 6
    MiniWeb = 6,
    /// 7
    Linux = 7,
    /// 8
    APad = 8,
    /// 9
    IPad = 9,
    /// 10
    Admin = 10,
    /// 11
    HarmonyOs = 11,
}

/// The class a platform belongs to, for `same-class-kick` and `pc-and-other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlatformClass {
    /// iOS, Android.
    Mobile,
    /// Windows, OSX, Linux.
    Pc,
    /// APad, iPad.
    Pad,
    /// Web alone.
    Web,
    /// MiniWeb alone.
    MiniWeb,
    /// Admin alone.
    Admin,
    /// HarmonyOS alone.
    HarmonyOs,
}

impl Platform {
    /// Every platform, in id order.
    pub const ALL: [Platform; 11] = [
        Platform::Ios,
        Platform::Android,
        Platform::Windows,
        Platform::Osx,
        Platform::Web,
        Platform::MiniWeb,
        Platform::Linux,
        Platform::APad,
        Platform::IPad,
        Platform::Admin,
        Platform::HarmonyOs,
    ];

    /// The platform with OpenIM id `id`, if there is one.
    pub fn from_id(id: i64) -> Option<Platform> {
        Platform::ALL.get(usize::try_from(id).ok()?.checked_sub(1)?).copied()
    }

    /// OpenIM's `platformID`.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// OpenIM's name for the platform.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Ios => "IOS",
            Platform::Android => "Android",
            Platform::Windows => "Windows",
            Platform::Osx => "OSX",
            Platform::Web => "Web",
            Platform::MiniWeb => "MiniWeb",
            Platform::Linux => "Linux",
            Platform::APad => "APad",
            Platform::IPad => "IPad",
            Platform::Admin => "Admin",
            Platform::HarmonyOs => "HarmonyOS",
        }
    }

    /// The platform's class.
    pub fn class(self) -> PlatformClass {
        match self {
            Platform::Ios | Platform::Android => PlatformClass::Mobile,
            Platform::Windows | Platform::Osx | Platform::Linux => PlatformClass::Pc,
            Platform::APad | Platform::IPad => PlatformClass::Pad,
            Platform::Web => PlatformClass::Web,
            Platform::MiniWeb => PlatformClass::MiniWeb,
            Platform::Admin => PlatformClass::Admin,
            Platform::HarmonyOs => PlatformClass::HarmonyOs,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.id())
    }
}

/// What a new login does to the user's existing sessions (`--multi-login-policy`).
///
/// The newest login always wins: a reconnect with the same token kicks the older socket, which
/// is most likely dead anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MultiLoginPolicy {
    /// `not-kick` (OpenIM 0): every login coexists.
    NotKick,
    /// `same-terminal-kick` (OpenIM 1, the default): a login kicks the user's sessions on the
    /// same platform.
    #[default]
    SameTerminalKick,
    /// `same-class-kick` (OpenIM 4): a login kicks the user's sessions of the same platform class.
    SameClassKick,
    /// `pc-and-other` (OpenIM 5): a PC login kicks nothing; any other login kicks every non-PC
    /// session of the user.
    PcAndOther,
}

impl MultiLoginPolicy {
    /// Every policy, for help texts and tests.
    pub const ALL: [MultiLoginPolicy; 4] = [
        MultiLoginPolicy::NotKick,
        MultiLoginPolicy::SameTerminalKick,
        MultiLoginPolicy::SameClassKick,
        MultiLoginPolicy::PcAndOther,
    ];

    /// The policy's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            MultiLoginPolicy::NotKick => "not-kick",
            MultiLoginPolicy::SameTerminalKick => "same-terminal-kick",
            MultiLoginPolicy::SameClassKick => "same-class-kick",
            MultiLoginPolicy::PcAndOther => "pc-and-other",
        }
    }

    /// OpenIM's number for the policy.
    pub fn openim_id(self) -> u8 {
        match self {
            MultiLoginPolicy::NotKick => 0,
            MultiLoginPolicy::SameTerminalKick => 1,
            MultiLoginPolicy::SameClassKick => 4,
            MultiLoginPolicy::PcAndOther => 5,
        }
    }

    /// Whether a new login on `new` kicks an existing session on `existing`.
    pub fn kicks(self, existing: Platform, new: Platform) -> bool {
        match self {
            MultiLoginPolicy::NotKick => false,
            MultiLoginPolicy::SameTerminalKick => existing == new,
            MultiLoginPolicy::SameClassKick => existing.class() == new.class(),
            MultiLoginPolicy::PcAndOther => new.class() != PlatformClass::Pc && existing.class() != PlatformClass::Pc,
        }
    }
}

impl fmt::Display for MultiLoginPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MultiLoginPolicy {
    type Err = String;

    /// Accepts the name (`same-terminal-kick`) or OpenIM's number (`1`).
    fn from_str(s: &str) -> Result<Self, String> {
        MultiLoginPolicy::ALL.into_iter().find(|p| p.name() == s || p.openim_id().to_string() == s).ok_or_else(|| {
            let names: Vec<String> =
                MultiLoginPolicy::ALL.iter().map(|p| format!("{} ({})", p.name(), p.openim_id())).collect();
            format!("unknown multi-login policy {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// A set of platforms (a user's online platforms), as a bit per platform id: no allocation, so
/// the registry can compute it under its lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PlatformSet(u16);

impl PlatformSet {
    pub(crate) fn insert(&mut self, p: Platform) {
        self.0 |= 1 << p.id();
    }

    /// The platform ids in the set, ascending, each once.
    pub(crate) fn ids(self) -> Vec<u8> {
        Platform::ALL.iter().map(|p| p.id()).filter(|id| self.0 & (1 << id) != 0).collect()
    }
}

impl FromIterator<Platform> for PlatformSet {
    fn from_iter<I: IntoIterator<Item = Platform>>(iter: I) -> PlatformSet {
        let mut set = PlatformSet::default();
        iter.into_iter().for_each(|p| set.insert(p));
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MultiLoginPolicy::*;
    use Platform::*;

    #[test]
    fn platform_ids_round_trip_and_out_of_range_is_none() {
        for p in Platform::ALL {
            assert_eq!(Platform::from_id(i64::from(p.id())), Some(p));
        }
        for bad in [-1, 0, 12, 255, i64::MAX] {
            assert_eq!(Platform::from_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn platform_classes_match_openim() {
        let table = [
            (Ios, PlatformClass::Mobile),
            (Android, PlatformClass::Mobile),
            (Windows, PlatformClass::Pc),
            (Osx, PlatformClass::Pc),
            (Linux, PlatformClass::Pc),
            (APad, PlatformClass::Pad),
            (IPad, PlatformClass::Pad),
            (Web, PlatformClass::Web),
            (MiniWeb, PlatformClass::MiniWeb),
            (Admin, PlatformClass::Admin),
            (HarmonyOs, PlatformClass::HarmonyOs),
        ];
        for (p, c) in table {
            assert_eq!(p.class(), c, "{p}");
        }
    }

    /// (policy, existing, new, kicks?) — the decision table each policy must follow.
    const TABLE: &[(MultiLoginPolicy, Platform, Platform, bool)] = &[
        (NotKick, Ios, Ios, false),
        (NotKick, Web, Web, false),
        (NotKick, Windows, Ios, false),
        (SameTerminalKick, Ios, Ios, true),
        (SameTerminalKick, Ios, Android, false),
        (SameTerminalKick, Windows, Windows, true),
        (SameTerminalKick, Windows, Osx, false),
        (SameTerminalKick, Web, MiniWeb, false),
        (SameClassKick, Ios, Android, true),
        (SameClassKick, Android, Android, true),
        (SameClassKick, Windows, Linux, true),
        (SameClassKick, Osx, Windows, true),
        (SameClassKick, APad, IPad, true),
        (SameClassKick, Ios, IPad, false),
        (SameClassKick, Web, MiniWeb, false),
        (SameClassKick, Admin, Admin, true),
        (SameClassKick, HarmonyOs, Android, false),
        (PcAndOther, Windows, Windows, false),
        (PcAndOther, Ios, Windows, false),
        (PcAndOther, Web, Linux, false),
        (PcAndOther, Ios, Android, true),
        (PcAndOther, Ios, Ios, true),
        (PcAndOther, Web, IPad, true),
        (PcAndOther, Windows, Ios, false),
        (PcAndOther, Osx, Web, false),
        (PcAndOther, HarmonyOs, Admin, true),
    ];

    #[test]
    fn policy_decision_table() {
        for &(policy, existing, new, expected) in TABLE {
            assert_eq!(policy.kicks(existing, new), expected, "{policy}: existing {existing}, new {new}");
        }
    }

    #[test]
    fn every_kicking_policy_kicks_the_same_platform_except_pc_under_pc_and_other() {
        for p in Platform::ALL {
            assert!(SameTerminalKick.kicks(p, p));
            assert!(SameClassKick.kicks(p, p));
            assert_eq!(PcAndOther.kicks(p, p), p.class() != PlatformClass::Pc);
            assert!(!NotKick.kicks(p, p));
        }
    }

    #[test]
    fn policy_parses_names_and_numbers() {
        for p in MultiLoginPolicy::ALL {
            assert_eq!(p.name().parse::<MultiLoginPolicy>(), Ok(p));
            assert_eq!(p.openim_id().to_string().parse::<MultiLoginPolicy>(), Ok(p));
        }
        let err = "kick-everyone".parse::<MultiLoginPolicy>().unwrap_err();
        assert!(err.contains("same-terminal-kick (1)"), "{err}");
        assert_eq!(MultiLoginPolicy::default(), SameTerminalKick);
    }

    #[test]
    fn platform_set_lists_ids_ascending_once() {
        let set: PlatformSet = [Platform::Web, Platform::Ios, Platform::Web, Platform::HarmonyOs].into_iter().collect();
        assert_eq!(set.ids(), vec![1, 5, 11]);
        assert_eq!(PlatformSet::default().ids(), Vec::<u8>::new());
    }
}
