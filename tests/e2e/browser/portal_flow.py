#!/usr/bin/env python3
"""The registration portal's whole flow in headless Chromium, driven by Selenium.

Run by the Rust test `tests/e2e/portal_browser.rs` as

    python3 tests/e2e/browser/portal_flow.py BASE_URL SCREENSHOT_DIR

against a real relay whose portal is at BASE_URL. BASE_URL must be the portal's own `url`
(the one its sign-in mails link to): cookies belong to one host name, so a session made on
http://localhost:PORT is not sent to http://127.0.0.1:PORT. Over plain HTTP, Chromium
keeps the portal's `Secure` cookies only from loopback (localhost or 127.x), which is
where the portal allows plain HTTP anyway.

The script and the test talk over stdin/stdout, one JSON object a line:

    script -> test                                        test -> script
    {"step": "NAME"}                                      (nothing: for the log)
    {"want": "mail", "to": ADDR}                          {"body": FULL MESSAGE TEXT}
        the next message the test's sink received for ADDR (it waits for it)
    {"want": "smtp", "from_ip": "127.x.y.z",              {"code": 250} or
     "mail_from": ADDR, "rcpt": ADDR}                     {"code": 550, "text": "..."}
        one message sent through the relay from that source address
    {"done": true}                                        (nothing: the script exits 0)

Everything else the script says goes to stderr. On a failure it saves `failure.png` and
`failure.html` in SCREENSHOT_DIR, prints the traceback to stderr and exits 1.

The data comes from the environment: PORTAL_EMAIL (the department's person),
PORTAL_IP (the address to register, e.g. 127.0.3.77), PORTAL_OUTSIDE_RCPT (an address
outside the organisation), PORTAL_POSTMASTER and PORTAL_PASSWORD (the postmaster's
name and password). Optional: PORTAL_WAIT (seconds to wait for a page element,
default 15) and PORTAL_SETTLE (seconds a registration or deletion may take to reach
the relay, default 15).

It needs Debian's chromium, chromium-driver and python3-selenium (see .ci/run). When
`python3` is another Python without Selenium (a pyenv one, say), the script starts
itself again under Debian's /usr/bin/python3.
"""

import os
import sys

try:
    import selenium  # noqa: F401  (only: is it there?)
except ImportError:
    DEBIAN_PYTHON = "/usr/bin/python3"
    if (
        os.path.exists(DEBIAN_PYTHON)
        and os.path.realpath(sys.executable) != os.path.realpath(DEBIAN_PYTHON)
        and not os.environ.get("PORTAL_FLOW_REEXEC")
    ):
        os.environ["PORTAL_FLOW_REEXEC"] = "1"
        os.execv(DEBIAN_PYTHON, [DEBIAN_PYTHON] + sys.argv)
    sys.stderr.write(
        f"portal_flow: {sys.executable} has no selenium: "
        "apt-get install python3-selenium chromium chromium-driver\n"
    )
    sys.exit(1)

import email
import email.policy
import json
import re
import time
import traceback
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DESKTOP = (1280, 900)
PHONE = (390, 844)
# Chromium cannot capture a page taller than this in one screenshot.
MAX_SHOT_HEIGHT = 16000

HOSTNAME = "printer-3.physics.example.edu"
DEPARTMENT = "Physics"
PURPOSE = "Scan to e-mail from the copier on floor 3"
SENDER = "copier@physics.example.edu"

LINK = re.compile(r"(https?://[^\s\"'<>]+?)?(/signin/link\?token=[A-Za-z0-9_-]+)")


def log(*words):
    print("portal_flow:", *words, file=sys.stderr, flush=True)


class FlowError(AssertionError):
    """What the portal did is not what the flow expects."""


def check(condition, message):
    if not condition:
        raise FlowError(message)


# --- The line protocol with the Rust test ----------------------------------------------


class TestLink:
    """The Rust test at the other end of stdin/stdout: one JSON object a line each way.

    It keeps its own copies of the two pipes, and points file descriptors 0 and 1 at
    /dev/null and stderr, so that nothing else in this process or its children
    (Selenium, chromedriver, Chromium) can read the test's answers or write into the
    protocol.
    """

    def __init__(self):
        self._out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        self._in = os.fdopen(os.dup(0), "r", encoding="utf-8")
        sys.stdout.flush()
        os.dup2(2, 1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)

    def say(self, **message):
        """Sends one message that needs no answer."""
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()

    def ask(self, **message):
        """Sends one message and returns the test's answer."""
        self.say(**message)
        line = self._in.readline()
        check(line, f"the test closed its end without answering {message}")
        try:
            answer = json.loads(line)
        except json.JSONDecodeError as e:
            raise FlowError(f"the test answered {line!r}, not JSON: {e}") from None
        check(isinstance(answer, dict), f"the test answered {line!r}, not an object")
        return answer

    def step(self, name):
        log("step:", name)
        self.say(step=name)

    def mail(self, to):
        """The text of the next message the sink received for `to` (its body decoded)."""
        answer = self.ask(want="mail", to=to)
        check(isinstance(answer.get("body"), str), f"no body in the test's answer {answer}")
        return message_text(answer["body"])

    def smtp(self, from_ip, mail_from, rcpt):
        """The reply code (and text, if given) for one message sent from `from_ip`."""
        answer = self.ask(want="smtp", from_ip=from_ip, mail_from=mail_from, rcpt=rcpt)
        check(isinstance(answer.get("code"), int), f"no code in the test's answer {answer}")
        return answer["code"], answer.get("text", "")

    def done(self):
        self.say(done=True)


def message_text(raw):
    """A message's header and its text parts, decoded (quoted-printable, base64, MIME)."""
    try:
        message = email.message_from_string(raw, policy=email.policy.default)
        parts = [f"Subject: {message.get('subject', '')}"]
        for part in message.walk():
            if part.get_content_maintype() == "text":
                parts.append(part.get_content())
        text = "\n".join(parts)
    except Exception as e:  # an odd message is still worth searching as it came
        log(f"cannot parse the message as MIME ({e}); searching it as it is")
        return raw
    return text if len(parts) > 1 else raw


# --- The browser --------------------------------------------------------------------------


def start_chromium():
    """Debian's headless Chromium through Debian's chromedriver (never Selenium Manager)."""
    options = Options()
    options.binary_location = CHROMIUM
    for argument in [
        "--headless=new",
        "--no-sandbox",  # as root
        "--disable-dev-shm-usage",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        "--hide-scrollbars",
        "--lang=en-US",
        # No network but loopback here: nothing of Google's to call at start.
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-features=PasswordLeakDetection,Translate,MediaRouter",
    ]:
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {"credentials_enable_service": False, "profile.password_manager_enabled": False},
    )
    started = time.monotonic()
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    log(
        f"Chromium {driver.capabilities.get('browserVersion')} started in "
        f"{time.monotonic() - started:.1f} s"
    )
    driver.set_page_load_timeout(60)
    return driver


class Flow:
    """The browser, where the portal is, where screenshots go, and the test at the end
    of the pipes; with the small moves every step is made of."""

    def __init__(self, driver, base, shots, test):
        self.driver = driver
        self.base = base.rstrip("/")
        self.shots = shots
        self.test = test
        self.email = env("PORTAL_EMAIL")
        self.ip = env("PORTAL_IP")
        self.outside = env("PORTAL_OUTSIDE_RCPT")
        self.postmaster = env("PORTAL_POSTMASTER")
        self.password = env("PORTAL_PASSWORD")
        self.wait_seconds = float(os.environ.get("PORTAL_WAIT", "15"))
        self.settle_seconds = float(os.environ.get("PORTAL_SETTLE", "15"))
        self.request_id = None

    # Pages.

    def open(self, path):
        self.driver.get(urljoin(self.base + "/", path.lstrip("/")))
        self.loaded()

    def loaded(self):
        WebDriverWait(self.driver, self.wait_seconds).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )

    def path(self):
        return urlsplit(self.driver.current_url).path

    def expect_path(self, path):
        check(
            self.path() == path,
            f"expected {path}, the browser is at {self.driver.current_url} "
            f"(heading: {self.heading()!r})",
        )

    def heading(self):
        found = self.driver.find_elements(By.TAG_NAME, "h1")
        return found[0].text if found else ""

    def find(self, css, within=None):
        """The element `css` selects, once it is there."""
        try:
            return WebDriverWait(within or self.driver, self.wait_seconds).until(
                lambda _: (within or self.driver).find_element(By.CSS_SELECTOR, css)
            )
        except TimeoutException:
            raise FlowError(
                f"no {css} on {self.driver.current_url} (heading: {self.heading()!r})"
            ) from None

    def all(self, css):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def click_through(self, element):
        """Clicks a link or submit button and waits for the next page to be there."""
        page = self.driver.find_element(By.TAG_NAME, "html")
        element.click()

        def replaced(_):
            # The old page's root is gone once the new page is there. Chromium sometimes
            # says so with a bare "Node ... does not belong to the document" error rather
            # than a stale-element one (StaleElementReferenceException is a
            # WebDriverException too).
            try:
                page.is_enabled()
                return False
            except WebDriverException:
                return True

        try:
            WebDriverWait(self.driver, self.wait_seconds).until(replaced)
        except TimeoutException:
            raise FlowError(
                f"clicking {element.tag_name}#{element.get_attribute('id')} on "
                f"{self.driver.current_url} led to no new page"
            ) from None
        self.loaded()

    def type_into(self, css, text):
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def flash(self):
        return self.find("p.flash").text

    def errors(self):
        return [e.text for e in self.all(".error") if e.text.strip()]

    # Screenshots.

    def shot(self, name, full_page=False):
        """Saves the page as SCREENSHOT_DIR/name; `full_page` makes the viewport as tall
        as the document first, so the shot has all of it."""
        if full_page:
            height = self.driver.execute_script(
                "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)"
            )
            self.viewport(DESKTOP[0], min(max(height, DESKTOP[1]), MAX_SHOT_HEIGHT))
        try:
            self.driver.save_screenshot(str(self.shots / name))
        finally:
            if full_page:
                self.viewport_reset()
        log("screenshot", name)

    def phone_shot(self, name):
        """Saves the page as a phone shows it: 390 CSS pixels wide, touch, mobile."""
        self.viewport(*PHONE, mobile=True)
        try:
            self.driver.refresh()
            self.loaded()
            self.driver.save_screenshot(str(self.shots / name))
        finally:
            self.viewport_reset()
            self.driver.refresh()
            self.loaded()
        log("screenshot", name)

    def viewport(self, width, height, mobile=False):
        # A window cannot be narrower than 500 pixels even headless; the device metrics
        # override sets the page's viewport itself, and the shot is exactly its size.
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def viewport_reset(self):
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def save_failure(self):
        try:
            self.driver.save_screenshot(str(self.shots / "failure.png"))
            (self.shots / "failure.html").write_text(
                f"<!-- {self.driver.current_url} -->\n{self.driver.page_source}",
                encoding="utf-8",
            )
            log(f"saved failure.png and failure.html (at {self.driver.current_url})")
        except Exception as e:
            log(f"could not save the failure's page: {e}")

    # Mail and the relay.

    def signin_link(self):
        """The sign-in link in the next mail to PORTAL_EMAIL."""
        text = self.test.mail(self.email)
        links = {m.group(0) for m in LINK.finditer(text)}
        check(len(links) == 1, f"expected one sign-in link in the mail, found {links}:\n{text}")
        link = links.pop()
        origin, path = LINK.match(link).groups()
        if origin is not None:
            check(
                origin.rstrip("/") == self.base,
                f"the mail links to {origin}, but the script was given {self.base}: give it "
                "the portal's `url` (cookies belong to one host name)",
            )
        return self.base + path

    def relayed(self, expect_code, settle=False):
        """Sends one message from PORTAL_IP to PORTAL_OUTSIDE_RCPT and checks the reply:
        250 when `expect_code` is 250, any 5xx when it is 550. With `settle`, tries again
        until PORTAL_SETTLE has passed, for a change the relay takes up a moment later."""
        deadline = time.monotonic() + (self.settle_seconds if settle else 0)
        while True:
            code, text = self.test.smtp(self.ip, SENDER, self.outside)
            log(f"smtp from {self.ip} to {self.outside}: {code} {text}".rstrip())
            ok = code == 250 if expect_code == 250 else 500 <= code < 600
            if ok:
                return
            check(
                time.monotonic() < deadline,
                f"mail from {self.ip} to {self.outside} got {code} {text}, "
                f"expected {'250' if expect_code == 250 else '5xx'}",
            )
            time.sleep(0.5)

    # Pieces of steps.

    def sign_in_by_link(self, screenshots):
        """Asks for a link for PORTAL_EMAIL, opens it from the mail and confirms: on
        "List Relays"."""
        self.open("/signin")
        if screenshots:
            self.shot("01-signin.png")
        self.type_into("#email", self.email)
        self.click_through(self.find("#send-link"))
        main = self.find("main").text
        check("link" in main.lower(), f"after asking for a link, the page says: {main!r}")

        self.driver.get(self.signin_link())
        self.loaded()
        button = self.find("#confirm-signin")
        if screenshots:
            self.shot("02-confirm-signin.png")
        self.click_through(button)
        self.expect_relays()

    def expect_relays(self):
        self.expect_path("/relays")
        check("Relays" in self.heading(), f"the heading on /relays is {self.heading()!r}")
        self.find("#signout")

    def sign_in_as_postmaster(self):
        self.open("/signin")
        self.type_into("#name", self.postmaster)
        self.type_into("#password", self.password)
        self.click_through(self.find("#password-signin"))
        check(
            self.path() == "/review",
            f"the postmaster's sign-in led to {self.driver.current_url}: {self.errors()}",
        )
        self.find("#signout")

    def sign_out(self):
        self.click_through(self.find("#signout"))
        check(not self.all("#signout"), f"still signed in after signing out, at {self.path()}")
        self.open("/relays")
        check(not self.all("#signout"), "/relays still shows a signed-in page after signing out")

    def registration_row(self):
        rows = self.all(f'#registrations tr[data-network="{self.ip}/32"]')
        return rows[0] if rows else None

    def request_ids(self):
        return {r.get_attribute("data-request-id") for r in self.all("#requests tr[data-request-id]")}

    def request_state(self, request_id):
        row = self.find(f'#requests tr[data-request-id="{request_id}"]')
        return self.find(".state", within=row).text.strip()


def env(name):
    value = os.environ.get(name, "")
    check(value, f"{name} is not set")
    return value


# --- The steps ------------------------------------------------------------------------------


def step_1_sign_in_by_link(f):
    """The department's person signs in with a mailed link and sees an empty list."""
    f.sign_in_by_link(screenshots=True)
    check(f.registration_row() is None, f"{f.ip} is registered before anyone asked")
    f.shot("03-relays-empty.png")


def step_2_not_relayed_yet(f):
    """Before any registration, mail from PORTAL_IP to the outside is refused."""
    f.relayed(550)


def step_3_request(f):
    """Fills in and sends the request form: the request is listed as pending."""
    before = f.request_ids()
    f.click_through(f.find("#new-request"))
    f.expect_path("/requests/new")
    admin = f.find("#admin").get_attribute("value")
    check(
        admin.strip().lower() == f.email.lower(),
        f"the admin field holds {admin!r}, not the signed-in {f.email}",
    )
    f.type_into("#network", f.ip)
    f.type_into("#hostname", HOSTNAME)
    f.type_into("#department", DEPARTMENT)
    f.type_into("#contact", f.email)
    f.type_into("#purpose", PURPOSE)
    Select(f.find("#volume")).select_by_value("low")
    f.type_into("#senders", SENDER)
    f.shot("04-request-form.png", full_page=True)
    terms = f.find("#terms")
    if not terms.is_selected():
        terms.click()
    f.click_through(f.find("#submit-request"))
    check(f.path() == "/relays", f"the request was not taken: {f.errors()}")
    f.expect_relays()
    new = f.request_ids() - before
    check(len(new) == 1, f"expected one new request on /relays, found {sorted(new)}")
    f.request_id = new.pop()
    state = f.request_state(f.request_id)
    check(state == "pending", f"request {f.request_id} is {state!r}, not pending")
    f.shot("05-pending.png")
    f.sign_out()


def step_4_postmaster_approves(f):
    """The postmaster signs in with name and password and approves the request."""
    f.sign_in_as_postmaster()
    row = f.find(f'#review tr[data-request-id="{f.request_id}"]')
    f.shot("06-review-queue.png")
    f.click_through(f.find("a.open", within=row))
    f.expect_path(f"/review/{f.request_id}")
    f.shot("07-review-request.png", full_page=True)
    f.click_through(f.find("#approve"))
    f.expect_path("/review")
    log("flash:", f.flash())
    f.sign_out()


def step_5_confirmation_mail(f):
    """The approval is confirmed by mail to the contact, naming the address."""
    text = f.test.mail(f.email)
    check(f.ip in text, f"the confirmation does not mention {f.ip}:\n{text}")


def step_6_relayed(f):
    """Now mail from PORTAL_IP to the outside is relayed."""
    f.relayed(250, settle=True)


def step_7_delete(f):
    """Signed in again by link, the admin of record sees the registration and deletes it."""
    f.sign_in_by_link(screenshots=False)
    row = f.registration_row()
    check(row is not None, f"no registration row for {f.ip}/32 on /relays")
    state = f.request_state(f.request_id)
    check(state == "approved", f"request {f.request_id} is {state!r}, not approved")
    f.shot("08-relays.png")
    f.phone_shot("10-relays-phone.png")
    f.click_through(f.find("a.delete", within=f.registration_row()))
    button = f.find("#confirm-delete")
    f.shot("09-confirm-delete.png")
    f.click_through(button)
    f.expect_relays()
    log("flash:", f.flash())
    check(f.registration_row() is None, f"{f.ip}/32 is still listed after deleting it")


def step_8_not_relayed_any_more(f):
    """After the deletion, mail from PORTAL_IP to the outside is refused again."""
    f.relayed(550, settle=True)


STEPS = [
    step_1_sign_in_by_link,
    step_2_not_relayed_yet,
    step_3_request,
    step_4_postmaster_approves,
    step_5_confirmation_mail,
    step_6_relayed,
    step_7_delete,
    step_8_not_relayed_any_more,
]


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    base, shots = argv[1], Path(argv[2])
    shots.mkdir(parents=True, exist_ok=True)
    test = TestLink()
    driver = None
    flow = None
    try:
        driver = start_chromium()
        flow = Flow(driver, base, shots, test)
        for step in STEPS:
            test.step(step.__name__)
            step(flow)
        test.done()
        return 0
    except Exception:
        if flow is not None:
            flow.save_failure()
        traceback.print_exc(file=sys.stderr)
        return 1
    finally:
        if driver is not None:
            driver.quit()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
