//! User-agent classification.

use snakeway_identity::{DeviceClass, UserAgent};

const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 \
     (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 \
     (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
const ANDROID_PHONE: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
const ANDROID_TABLET: &str = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 \
     (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

#[test]
fn chrome_on_windows_is_a_desktop() {
    let ua = UserAgent::parse(CHROME_WINDOWS.as_bytes());
    assert_eq!(ua.device, DeviceClass::Desktop);
    assert!(!ua.bot);
    assert_eq!(ua.browser.as_deref(), Some("Chrome"));
    assert_eq!(ua.os.as_deref(), Some("Windows 10"));
}

#[test]
fn iphone_is_mobile() {
    let ua = UserAgent::parse(IPHONE.as_bytes());
    assert_eq!(ua.device, DeviceClass::Mobile);
    assert!(!ua.bot);
    assert_eq!(ua.browser.as_deref(), Some("Safari"));
    assert_eq!(ua.os.as_deref(), Some("iPhone"));
}

#[test]
fn tablets() {
    assert_eq!(
        UserAgent::parse(IPAD.as_bytes()).device,
        DeviceClass::Tablet
    );
    assert_eq!(
        UserAgent::parse(ANDROID_TABLET.as_bytes()).device,
        DeviceClass::Tablet
    );
    assert_eq!(
        UserAgent::parse(ANDROID_PHONE.as_bytes()).device,
        DeviceClass::Mobile
    );
}

#[test]
fn googlebot_is_a_bot() {
    let ua = UserAgent::parse(GOOGLEBOT.as_bytes());
    assert!(ua.bot);
    assert_eq!(ua.device, DeviceClass::Bot);
    assert_eq!(ua.browser.as_deref(), Some("Googlebot"));
}

#[test]
fn http_libraries_are_bots() {
    for lib in ["Wget/1.21.4", "Java/17.0.2", "libwww-perl/6.72"] {
        let ua = UserAgent::parse(lib.as_bytes());
        assert!(ua.bot, "{lib}: {ua:?}");
        assert_eq!(ua.device, DeviceClass::Bot, "{lib}");
    }
}

#[test]
fn unknown_agents() {
    for garbage in ["", "-", "totally made up", "\u{1F40D}"] {
        let ua = UserAgent::parse(garbage.as_bytes());
        assert_eq!(ua.device, DeviceClass::Unknown, "{garbage:?}: {ua:?}");
        assert!(!ua.bot);
    }
}

#[test]
fn serializes_snake_case() {
    let ua = UserAgent::parse(GOOGLEBOT.as_bytes());
    let json = serde_json::to_value(&ua).unwrap();
    assert_eq!(json["device"], "bot");
    assert_eq!(json["bot"], true);
    assert_eq!(
        serde_json::to_value(DeviceClass::Desktop).unwrap(),
        "desktop"
    );
    assert_eq!(DeviceClass::Appliance.to_string(), "appliance");
}
