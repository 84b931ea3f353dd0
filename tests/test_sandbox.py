"""The sandbox as the README starts it (``sms-gateway run``: embedded Redis, both simulators, the Procfile's
processes), used through the phone page in headless Chromium, then stopped with Ctrl-C and started again."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port, wait_for

PERSON = "+14155550142"
SCREENSHOTS = ROOT / "var" / "screenshots"


def chromium() -> tuple[str, str]:
    """(browser, driver) paths of Debian's headless Chromium; skips when they are not installed.

    A test never installs anything: .ci/run installs the packages, a developer does it once by hand.
    """
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [what for what, found in (("the browser (chromium)", browser), ("its driver (chromedriver)", driver))
               if not found]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found in PATH; install both with "
                    "`apt-get install chromium chromium-driver` (as root; .ci/run does) to run the browser tests")
    return browser, driver


class Sandbox:
    """``sms-gateway run`` in a child process with a clean environment and its own data directory.

    It runs in a process group of its own, as a shell runs a command in a terminal, so that stopping it
    can send SIGINT to the whole group, as the terminal does on Ctrl-C.
    """

    def __init__(self, data_dir, port: int | None = None, cwd=None, args: tuple[str, ...] = (), **settings: str):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.output: list[str] = []
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
               "SANDBOX_DATA_DIR": str(data_dir), "PORT": str(self.port), "CHAT_IDLE_TIMEOUT_SECONDS": "900",
               **settings}
        self.env, self.cwd = env, cwd or data_dir
        self.process = subprocess.Popen([sys.executable, "-m", "cli", "run", *args], cwd=self.cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        process_group=0)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.phone_url = wait_for(self._phone_url, timeout=90, interval=0.1, message="the sandbox's banner")

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)

    def _phone_url(self):
        if self.process.poll() is not None:
            raise AssertionError("sms-gateway run exited:\n" + "".join(self.output))
        match = re.search(r"phone:\s+(http://127\.0\.0\.1:\d+/)", "".join(self.output))
        return match[1] if match else None

    def api(self, path: str, **params):
        return requests.get(self.phone_url + path.lstrip("/"), params=params, timeout=5).json()

    @property
    def text(self) -> str:
        return "".join(self.output)

    def ports(self) -> dict[str, str]:
        """Where the banner says each part listens."""
        found = {"phone": self.phone_url}
        for name, pattern in (("redis", r"embedded Redis on (127\.0\.0\.1:\d+)"),
                              ("uponai", r"UponAI simulator at (http://[\d.:]+)"),
                              ("twilio", r"Twilio simulator at (http://[\d.:]+)")):
            found[name] = re.search(pattern, self.text)[1]
        return found

    def stop(self, timeout: float = 60, signum: int = signal.SIGINT) -> int:
        """Ctrl-C in a terminal: SIGINT to the whole process group (SIGHUP: the terminal closed); the exit code."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signum)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError(f"sms-gateway run did not stop on Ctrl-C in {timeout}s:\n{self.text}") from None
        self.reader.join(timeout=10)
        self.process.stdout.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def chromium_paths() -> tuple[str, str]:
    return chromium()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """One sandbox for the browser tests; each of them texts from a number of its own."""
    started = Sandbox(tmp_path_factory.mktemp("sandbox"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def browser(chromium_paths, sandbox):  # chromium_paths first: skip before starting the sandbox
    from selenium import webdriver

    binary, driver_path = chromium_paths
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1100,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def phone(browser, sandbox):
    """The phone page freshly loaded (nothing typed or ticked by an earlier test), its configuration read."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(sandbox.phone_url)
    # The page shows "…" until it has read its configuration, and then fills in the number to text from: typing in
    # the number before that got it appended to the default ('+14155550123+14155550142', the first test failed).
    WebDriverWait(browser, 30, poll_frequency=0.1).until(
        lambda b: b.find_element(By.ID, "gateway-number").text.startswith("+")
        and b.find_element(By.ID, "number").get_attribute("value"), message="the page to read its configuration")
    return browser


def use_number(browser, number: str) -> None:
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, "number")
    field.clear()
    field.send_keys(number)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)


def text(browser, body: str, *, picture: bool = False) -> None:
    from selenium.webdriver.common.by import By

    if picture:
        browser.find_element(By.ID, "mms").click()
    box = browser.find_element(By.ID, "body")
    box.send_keys(body)
    browser.find_element(By.ID, "send").click()


def texts(browser, css: str) -> list[str]:
    """The text of every element matching ``css``, read in one go (the page re-renders as it polls)."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)", css)


def wait_for_text(browser, css: str, needle: str, timeout: float = 30) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, timeout, poll_frequency=0.1).until(
            lambda b: any(needle in t for t in texts(b, css)), message=f"{needle!r} in {css}")
    except TimeoutException:  # what the page showed instead, and a picture of it
        save_screenshot(browser, "timed-out")
        shown = browser.execute_script(
            "return {number: document.getElementById('number').value, url: location.href, "
            "errors: Array.from(document.querySelectorAll('.error'), e => e.textContent), "
            "thread: Array.from(document.querySelectorAll('#thread .bubble'), e => e.textContent)}")
        raise AssertionError(f"no {needle!r} in {css} within {timeout}s; the page showed {shown} "
                             f"(screenshot in {SCREENSHOTS})") from None


def test_a_message_typed_in_the_phone_page_is_answered(sandbox, phone, tmp_path):
    browser = phone
    use_number(browser, PERSON)
    text(browser, "Hello from Chromium")

    wait_for_text(browser, "#thread .bubble.out", "You said: Hello from Chromium")
    wait_for_text(browser, "#thread .status", "delivered")  # the simulator's status callbacks
    wait_for_text(browser, "#state-recent", "delivered")  # ...as the gateway recorded them
    deliveries = texts(browser, "#state-recent > div")  # one line per delivery
    assert deliveries and all(re.fullmatch(r"SM\w{6}…: \w+", line) for line in deliveries), deliveries
    assert texts(browser, "#state-chat")[0].startswith("chat_")
    assert "chat ends in" in texts(browser, "#state-idle")[0]
    assert texts(browser, "#state-optout") == ["no"]

    shot = tmp_path / "phone-page.png"
    assert browser.save_screenshot(str(shot))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / "phone-page.png")
    # What the person's phone received, at the simulated Twilio.
    replies = [m for m in sandbox.api("/api/thread", number=PERSON)["messages"] if m["direction"] == "out"]
    assert [m["body"] for m in replies] == ["You said: Hello from Chromium"]


def test_a_picture_gets_the_text_only_notice(phone):
    browser = phone
    use_number(browser, "+14155550143")
    text(browser, "", picture=True)
    wait_for_text(browser, "#thread .bubble.out", "pictures and other media can't be read")
    wait_for_text(browser, "#thread .bubble.in", "[picture]")


def test_outbound_conversation_from_the_page(phone):
    from selenium.webdriver.common.by import By

    browser = phone
    use_number(browser, "+14155550144")
    button = browser.find_element(By.ID, "outbound-start")
    # The sandbox always has an admin token: a disabled button means outbound is broken.
    assert button.is_enabled(), browser.find_element(By.ID, "outbound-note").text
    browser.find_element(By.ID, "outbound-message").send_keys("Your order is ready")
    button.click()
    wait_for_text(browser, "#thread .bubble.out", "Your order is ready")
    text(browser, "Great, thanks")
    wait_for_text(browser, "#thread .bubble.out", "You said: Great, thanks")


def test_stop_opts_the_number_out(phone):
    browser = phone
    use_number(browser, "+14155550145")
    text(browser, "STOP")
    wait_for_text(browser, "#thread .bubble.twilio", "unsubscribed")
    wait_for_text(browser, "#state-optout", "yes")
    assert texts(browser, "#thread .bubble.out") == []


def test_ctrl_c_stops_everything_in_order_and_a_restart_keeps_ports_and_data(tmp_path):
    person = "+14155550146"
    # Its own (stopping it leaves the browser tests' sandbox alone), started where `make run` starts it.
    sandbox = Sandbox(tmp_path, cwd=ROOT)
    try:
        check_settings_as_the_banner_says(sandbox)
        assert re.search(r"limits: +30 texts per number per 1 h reach the agent", sandbox.text), sandbox.text
        sent = requests.post(sandbox.phone_url + "api/send", json={"from": person, "body": "keep me"}, timeout=30)
        assert sent.status_code == 200, sent.text
        wait_for(lambda: [m for m in sandbox.api("/api/thread", number=person)["messages"] if m["direction"] == "out"],
                 timeout=60, message="the reply")
        chat_before = sandbox.api("/api/conversation", number=person)["chat_id"]
        assert chat_before
        metrics = requests.get(f"http://127.0.0.1:{sandbox.port}/metrics", timeout=5).text
        assert re.search(r'^smsgw_messages_in_total\{kind="sms"\} [1-9]', metrics, re.M)
        ports_before = sandbox.ports()
    finally:
        # A generous bound, not a speed target: before, Redis went first and gunicorn waited 20 s for its worker.
        assert sandbox.stop(timeout=15) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{sandbox.port}/healthz", timeout=2)
    stopped_in_order(sandbox)

    again = Sandbox(tmp_path, port=sandbox.port)  # at once: the old connections are still in TIME_WAIT
    try:
        assert_same_ports_unless_taken(again, ports_before)
        assert again.api("/api/conversation", number=person)["chat_id"] == chat_before  # Redis kept it
        # The Twilio simulator kept the thread: the phone page shows it as it was.
        assert bodies(again, person) == ["keep me", "You said: keep me"]
        # Status callbacks cut short by the stop carry on: the reply ends delivered, as the gateway records it.
        wait_for(lambda: [m["status"] for m in again.api("/api/thread", number=person)["messages"]
                          if m["direction"] == "out"] == ["delivered"], timeout=30, message="the reply delivered")
        wait_for(lambda: [r["status"] for r in again.api("/api/conversation", number=person)["recent"]]
                 == ["delivered"], timeout=30, message="the gateway to record it delivered")
        # ...and the chat: what `sms-gateway show` prints comes from the admin API's conversation view.
        token = (tmp_path / "sandbox" / "admin-token").read_text().strip()
        view = requests.get(f"http://127.0.0.1:{again.port}/admin/conversations/{person}", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
        assert view.status_code == 200 and "chat_error" not in view.json(), view.text
        assert view.json()["chat"]["chat_id"] == chat_before
        # The UponAI simulator kept the chat: the conversation carries on in it.
        sent = requests.post(again.phone_url + "api/send", json={"from": person, "body": "still there?"}, timeout=30)
        assert sent.status_code == 200, sent.text
        wait_for(lambda: bodies(again, person)[-1:] == ["You said: still there?"], timeout=60, message="the reply")
        assert again.api("/api/conversation", number=person)["chat_id"] == chat_before
        chat = requests.get(f"{again.ports()['uponai']}/api/chats/{chat_before}", params={"workspaceId": 1},
                            headers={"Authorization": "Bearer sandbox-uponai-key"}, timeout=5)
        assert chat.status_code == 200, chat.text
        assert [m["content"] for m in chat.json()["messages"]] == [
            "keep me", "You said: keep me", "still there?", "You said: still there?"]
    finally:
        assert again.stop(timeout=15) == 0


PART_NAMES = {"phone": "phone page", "redis": "redis", "uponai": "UponAI simulator", "twilio": "Twilio simulator"}


def assert_same_ports_unless_taken(sandbox: Sandbox, before: dict[str, str]) -> None:
    """Each part listens where it did before the restart, unless another program took its port meanwhile (other
    sandboxes run on a shared machine): then the banner says where it moved, and why."""
    now = sandbox.ports()
    for part, address in before.items():
        if now[part] != address:
            old_port, new_port = address.rstrip("/").rsplit(":", 1)[1], now[part].rstrip("/").rsplit(":", 1)[1]
            said = f"{PART_NAMES[part]} on :{new_port} (:{old_port} is in use by another program)"
            assert said in sandbox.text, f"{part} moved from {address} to {now[part]} unannounced:\n{sandbox.text}"
    if now == before:
        assert "moved:" not in sandbox.text, sandbox.text


def bodies(sandbox: Sandbox, person: str) -> list[str]:
    """What the phone page's thread shows, both ways, oldest first."""
    return [m["body"] for m in sandbox.api("/api/thread", number=person)["messages"]]


def test_simulators_take_up_the_state_they_saved(tmp_path):
    """What the simulators saved (chats, messages, numbers) is what they answer with after a restart."""
    from sandbox.twilio_sim import TwilioSimulator
    from sandbox.uponai_sim import UponAISimulator

    auth = {"Authorization": "Bearer k"}
    uponai = UponAISimulator(api_key="k").keep_state_in(tmp_path / "uponai.json").start()
    twilio = TwilioSimulator(account_sid="AC" + "1" * 32, auth_token="t").keep_state_in(tmp_path / "twilio.json")
    twilio.start()
    try:
        chat = requests.post(f"{uponai.url}/create-chat", json={"agent_id": "a"}, headers=auth, timeout=5).json()
        requests.post(f"{uponai.url}/create-chat-completion", json={"chat_id": chat["chat_id"], "content": "hi"},
                      headers=auth, timeout=5).raise_for_status()
        twilio.add_number("+15005550006", sms_url="http://127.0.0.1:1/twilio/sms")
        sent = requests.post(f"{twilio.url}/2010-04-01/Accounts/{twilio.account_sid}/Messages.json",
                             data={"To": PERSON, "From": "+15005550006", "Body": "hello"},
                             auth=(twilio.account_sid, "t"), timeout=5)
        assert sent.status_code == 201, sent.text
    finally:
        uponai.stop()
        twilio.stop()
    assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed

    uponai = UponAISimulator(api_key="k").keep_state_in(tmp_path / "uponai.json").start()
    twilio = TwilioSimulator(account_sid="AC" + "1" * 32, auth_token="t").keep_state_in(tmp_path / "twilio.json")
    twilio.start()
    try:
        again = requests.get(f"{uponai.url}/get-chat/{chat['chat_id']}", headers=auth, timeout=5)
        assert again.status_code == 200, again.text
        assert [m["content"] for m in again.json()["message_with_tool_calls"]] == ["hi", "You said: hi"]
        second = requests.post(f"{uponai.url}/create-chat", json={"agent_id": "a"}, headers=auth, timeout=5).json()
        assert second["chat_id"].startswith("chat_000002_")  # numbering goes on
        assert twilio.sent_to(PERSON) == ["hello"]
        assert twilio.number("+15005550006").sms_url == "http://127.0.0.1:1/twilio/sms"
    finally:
        uponai.stop()
        twilio.stop()


def check_settings_as_the_banner_says(sandbox: Sandbox) -> None:
    """The banner's line for checking the settings works when pasted in a new shell: no settings in it at all."""
    lines = sandbox.text.splitlines()
    at = next(i for i, line in enumerate(lines) if "To check them:" in line)
    command = lines[at + 1].strip()
    assert command.endswith("sms-gateway doctor"), command
    shell = subprocess.run(["bash", "-c", command], cwd=sandbox.cwd, capture_output=True, text=True,
                           timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": sandbox.env["HOME"]})
    said = shell.stdout + shell.stderr
    assert shell.returncode == 0 and "not found" not in said, said
    assert "using the settings of the sandbox running here" in said, said


def readme_console_examples() -> dict[str, str]:
    """The README's console examples, by command (``send``, ``show``...), as written there."""
    readme = (ROOT / "README.md").read_text()
    examples = {}
    for line in readme.splitlines():
        if line.startswith("sms-gateway ") and "#" in line:
            command = line.split("#")[0].strip()
            examples.setdefault(command.split()[1], command)
    return examples


def test_the_readmes_console_examples_run_as_written_against_the_sandbox(tmp_path):
    """After `make run`, a new shell in the project, the README's activation line, then an example word for word:
    no settings to copy (the console finds the running sandbox's), the token given in the settings used and
    named by the banner, and the web on this machine alone."""
    activate = Path(sys.executable).parent / "activate"
    if not activate.exists():
        pytest.skip("the tests do not run from a virtualenv (make test makes .venv): no activation script to source")
    readme = (ROOT / "README.md").read_text()
    assert ". .venv/bin/activate" in readme
    examples = readme_console_examples()
    own_token = "my-own-admin-token-0123456789"
    sandbox = Sandbox(tmp_path, ADMIN_API_TOKEN=own_token)
    try:
        banner = sandbox.text
        assert "(Bearer token: your ADMIN_API_TOKEN)" in banner and "admin-token" not in banner, banner
        shell_env = {"PATH": "/usr/bin:/bin", "HOME": sandbox.env["HOME"], "SANDBOX_DATA_DIR": str(tmp_path)}

        def console(example: str) -> subprocess.CompletedProcess:
            # What a person types in a new terminal, from the README: the activation line, then the example.
            # (From the data directory: a developer's .env in the project must not change what the console reads.)
            return subprocess.run(["bash", "-c", f". {shlex.quote(str(activate))} && {example}"], cwd=tmp_path,
                                  env=shell_env, capture_output=True, text=True, timeout=120)

        sent = console(examples["send"])
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "Sent to +14155550100" in sent.stdout, sent.stdout
        shown = console(examples["show"])
        assert shown.returncode == 0 and "+14155550100" in shown.stdout, shown.stdout + shown.stderr
        # The admin API takes the token given in the settings; no other one is made up beside it.
        chats = requests.get(f"http://127.0.0.1:{sandbox.port}/admin/chats", timeout=10,
                             headers={"Authorization": f"Bearer {own_token}"})
        assert chats.status_code == 200, chats.text
        assert not (tmp_path / "sandbox" / "admin-token").exists()
        # Listening on 127.0.0.1 only: another loopback address of this machine finds nothing there.
        assert requests.get(f"http://127.0.0.1:{sandbox.port}/healthz", timeout=5).status_code == 200
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.2:{sandbox.port}/healthz", timeout=5)
    finally:
        assert sandbox.stop(timeout=15) == 0
    # Stopped: the console no longer takes that sandbox's settings.
    after = console(examples["show"])
    assert after.returncode == 2 and "ADMIN_API_TOKEN is not set" in after.stderr, after.stdout + after.stderr


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_processes_end_with_the_sandbox_even_when_it_is_killed(tmp_path):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux's /proc to find the sandbox's processes (and its parent-death signal)")
    sandbox = Sandbox(tmp_path)
    children = child_pids(sandbox.process.pid)
    assert len(children) == 3, children  # Redis (its keeper), web, worker
    everyone = children + [pid for child in children for pid in child_pids(child)]  # redis-server, gunicorn's...
    os.kill(sandbox.process.pid, signal.SIGKILL)  # no chance to stop them itself
    sandbox.process.wait()
    try:
        try:
            wait_for(lambda: not any(running(pid) for pid in everyone), timeout=60, interval=0.2,
                     message="the sandbox's processes to end after it was killed")
        except AssertionError as exc:  # which of them is left, and what they said
            left = [f"{pid} {command_line(pid)}" for pid in everyone if running(pid)]
            raise AssertionError(f"{exc}; still running: {left}\n{sandbox.text}") from None
    finally:
        for pid in children:  # each leads a process group of its own: what is left of it goes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        sandbox.stop()
    # Redis outlived the web and the worker: they stopped without losing it under them.
    said = sandbox.text
    assert "Shutting down: Master" in said and "warm shut down" in said, said
    assert "Traceback" not in said and "not reachable" not in said and "Connection refused" not in said, said


def test_a_port_left_with_old_connections_is_kept_and_a_taken_one_is_moved(tmp_path):
    """Connections of the last run in TIME_WAIT do not move a part; a program listening on its port does."""
    from sandbox.launcher import PortBook, port_is_free

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    (tmp_path / "ports.json").write_text(json.dumps({"phone page": port}))
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server's side closes first, so it is the one left in TIME_WAIT
    client.close()

    taken = PortBook(tmp_path / "ports.json")
    moved_to = taken.choose("phone page")
    assert moved_to != port and taken.moved == [f"phone page on :{moved_to} (:{port} is in use by another program)"]

    listener.close()
    with socket.socket() as plain, pytest.raises(OSError):  # what the old check did: the port looked taken
        plain.bind(("127.0.0.1", port))
    assert port_is_free(port)
    kept = PortBook(tmp_path / "ports.json")
    assert kept.choose("phone page") == port and kept.moved == []
    redis_port = kept.choose("redis")  # not remembered yet: its default, or any free port
    kept.save()
    assert json.loads((tmp_path / "ports.json").read_text()) == {"phone page": port, "redis": redis_port}


def stopped_in_order(sandbox: Sandbox) -> None:
    """Web and worker stopped (gunicorn's last line, then the launcher's) before Redis, with no traceback."""
    said = sandbox.text
    assert "Traceback" not in said and "not reachable" not in said and "Connection refused" not in said, said
    lines = said.splitlines()
    web_stopped = next(i for i, line in enumerate(lines) if re.search(r"web, worker stopped", line))
    assert "Shutting down: Master" in "\n".join(lines[:web_stopped])
    assert "stopping Redis" in "\n".join(lines[web_stopped:])
    assert "stopping Redis" not in "\n".join(lines[:web_stopped])


def test_closing_the_terminal_stops_everything_in_order_too(tmp_path):
    sandbox = Sandbox(tmp_path)
    assert sandbox.stop(timeout=15, signum=signal.SIGHUP) == 0  # what the shell passes on when its terminal closes
    stopped_in_order(sandbox)


@pytest.mark.parametrize(("present", "named"), [(["chromium"], "its driver (chromedriver)"),
                                                 (["chromedriver"], "the browser (chromium)")])
def test_the_browser_tests_skip_naming_what_is_missing(tmp_path, monkeypatch, present, named):
    """A machine with the browser but not its driver (or the reverse) is told which one to install, and how."""
    for name in present:
        program = tmp_path / name
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.skip.Exception) as skipped:
        chromium()
    said = str(skipped.value)
    assert said.startswith(f"{named} not found in PATH"), said
    assert "apt-get install chromium chromium-driver" in said, said


def test_what_is_typed_while_a_text_is_sent_stays_in_the_box(phone):
    """Sending takes a moment; what the person types meanwhile is theirs, not cleared with what was sent."""
    browser = phone
    use_number(browser, "+14155550147")
    # The page's request waits until the test lets it go, so the typing surely happens while it is on its way.
    browser.execute_script("""
        const real = window.fetch;
        window.fetch = (url, options) => String(url).startsWith("/api/send")
            ? new Promise((go) => { window.letSendGo = go; }).then(() => real(url, options)) : real(url, options);""")
    text(browser, "first part")
    WebDriverWait = __import__("selenium.webdriver.support.ui", fromlist=["WebDriverWait"]).WebDriverWait
    WebDriverWait(browser, 10, poll_frequency=0.05).until(
        lambda b: b.execute_script("return typeof window.letSendGo === 'function'"), message="the send to start")
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.ID, "body")
    box.send_keys(" and the rest")
    browser.execute_script("window.letSendGo()")
    wait_for_text(browser, "#thread .bubble.out", "You said: first part")
    assert box.get_attribute("value") == "and the rest"
    save_screenshot(browser, "typed-while-sending")


def test_an_invalid_number_shows_its_error_alone_and_is_not_asked_about_again(phone):
    """The old number's thread goes with it, and the page stops polling a number the backend refused."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser = phone
    use_number(browser, "+14155550148")
    text(browser, "hello before the typo")
    wait_for_text(browser, "#thread .bubble.out", "You said: hello before the typo")
    use_number(browser, "12345")
    wait_for_text(browser, "#number-error", "international format")
    assert texts(browser, "#thread .bubble") == [] and texts(browser, "#state-chat") == ["–"]
    save_screenshot(browser, "invalid-number")
    # Three of the page's 700 ms poll rounds, by the page's own clock: the refused number was asked about once.
    since = browser.execute_script("return performance.now()")
    WebDriverWait(browser, 30, poll_frequency=0.1).until(
        lambda b: b.execute_script("return performance.now()") > since + 2100, message="three poll rounds")
    asked = browser.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/thread?number=12345'))"
        ".length")
    assert asked == 1, asked
    use_number(browser, "+14155550148")  # back to a good number: its thread again
    wait_for_text(browser, "#thread .bubble.out", "You said: hello before the typo")
    assert texts(browser, "#number-error") == [""]


def save_screenshot(browser, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def test_a_redis_port_taken_after_the_check_is_noticed_not_mistaken_for_the_embedded_redis(tmp_path):
    """Another program (another checkout's sandbox) may take the port between the check and the bind: its answer
    must not pass for the embedded Redis's, whose bind then fails (the sandbox said "redis exited with 1")."""
    from sandbox.launcher import PortInUse, start_embedded_redis

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(PortInUse):
            process = start_embedded_redis(tmp_path / "redis", other.getsockname()[1])
            process.kill()  # (before the fix: a keeper whose redis-server could not bind)
            process.wait()
