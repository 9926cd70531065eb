"""stagerelay status [--json] [--watch] (issue 5).

What an operator sees: the daemon's figures from its metrics endpoint,
and the stream, the group and the ledger read directly, so that those
still show when no daemon runs. A part that cannot be read says why;
the exit status is 1 then.
"""

import json
import signal
import subprocess
import time

import pytest

from conftest import (CONSUMER, EXIT_CONFIG, EXIT_OK, EXIT_STARTUP,
                      consumer_argv, wait_until)
import servers


@pytest.fixture
def port():
    return servers.free_port()


def status_json(env, config, expect=None):
    r = env.run("-c", config, "status", "--json")
    if expect is not None:
        assert r.returncode == expect, r
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r
    return json.loads(lines[0]), r


def test_status_json_against_a_running_daemon(env, port):
    for i in range(3):
        env.publisher.document_cleaned("doc-s-%d" % i, "text %d" % i)
    config = env.write_config(concurrent_tasks=2,
                              metrics={"listen": "127.0.0.1:%d" % port})
    d = env.start(config)
    d.wait_log("metrics_listening", listen="127.0.0.1:%d" % port)
    wait_until(lambda: env.pending() == 0 and len(env.requests()) == 3,
               what="everything processed")

    def settled():
        s, r = status_json(env, config)
        return (s, r) if r.returncode == EXIT_OK and \
            s["daemon"]["workers_alive"] == 2 and \
            len(s["redis"]["consumers"]) == 2 else None

    s, r = wait_until(settled, timeout=10, what="both workers in status")
    dmn, rds, led = s["daemon"], s["redis"], s["ledger"]
    assert s["ok"] is True
    assert dmn["reachable"] is True and dmn["error"] is None
    assert dmn["workers_wanted"] == 2 and dmn["worker_restarts"] == 0
    assert dmn["events"]["triggered"] == 3
    assert dmn["events"]["dead"] == 0
    assert isinstance(dmn["version"], str) and dmn["version"]
    assert sorted(c["worker"] for c in dmn["circuits"]) == [1, 2]
    assert all(c["state"] == "closed" for c in dmn["circuits"])
    assert dmn["events_per_second"] is None     # one-shot: no rate
    assert rds["reachable"] is True and rds["group_exists"] is True
    assert rds["lag"] == 0 and rds["pending"] == 0
    assert rds["stream_length"] == 3 and rds["dead_letter_length"] == 0
    names = sorted(c["name"] for c in rds["consumers"])
    assert names == [CONSUMER + "-1", CONSUMER + "-2"]
    assert all(c["pending"] == 0 and c["idle_ms"] >= 0
               for c in rds["consumers"])
    assert led["reachable"] is True and led["schema"] == "stagerelay"
    assert led["counts"]["triggered"] == 3
    assert led["counts"]["dead"] == 0
    assert led["database"].endswith("/" + env.dbname)
    assert r.stderr == ""
    d.stop()


def test_status_human_view_shows_consumers_and_lag(env, port):
    env.publisher.document_cleaned("doc-h-1", "text")
    config = env.write_config(concurrent_tasks=2,
                              metrics={"listen": "127.0.0.1:%d" % port})
    d = env.start(config)
    d.wait_log("metrics_listening", listen="127.0.0.1:%d" % port)
    wait_until(lambda: env.pending() == 0 and len(env.requests()) == 1,
               what="the document processed")
    r = wait_until(lambda: (lambda r: r if CONSUMER + "-2" in r.stdout
                            else None)(env.run("-c", config, "status")),
                   what="both consumers listed")
    assert r.returncode == EXIT_OK, r
    out = r.stdout
    assert CONSUMER + "-1" in out and CONSUMER + "-2" in out, out
    assert "lag 0" in out, out
    assert "triggered 1" in out, out
    assert "2/2 alive" in out, out
    assert "\033[" not in out          # no screen control without --watch
    d.stop()


def test_status_without_a_daemon_still_reads_redis_and_the_ledger(env, port):
    env.publisher.document_cleaned("doc-n-1", "waiting")
    env.publisher.document_cleaned("doc-n-2", "waiting too")
    config = env.write_config(metrics={"listen": "127.0.0.1:%d" % port})
    assert env.run("-c", config, "ledger", "migrate").returncode == EXIT_OK
    s, r = status_json(env, config, expect=EXIT_STARTUP)
    assert s["ok"] is False
    dmn = s["daemon"]
    assert dmn["reachable"] is False
    assert "127.0.0.1:%d" % port in dmn["error"]
    assert dmn["workers_alive"] is None and dmn["events"] is None
    assert s["redis"]["reachable"] is True
    assert s["redis"]["stream_length"] == 2
    assert s["redis"]["group_exists"] is False
    assert s["redis"]["lag"] is None and s["redis"]["consumers"] == []
    assert s["ledger"]["reachable"] is True
    assert s["ledger"]["counts"]["triggered"] == 0
    # The human view says the same.
    r = env.run("-c", config, "status")
    assert r.returncode == EXIT_STARTUP, r
    assert "daemon" in r.stdout and "unreachable" in r.stdout, r
    assert "length 2" in r.stdout, r


def test_status_names_what_failed_and_shows_the_rest(env):
    free = servers.free_port()
    config = env.write_config(redis_port=free,
                              ledger={"dsn": env.dsn + " password=s3cret-pw",
                                      "schema": "stagerelay"})
    s, r = status_json(env, config, expect=EXIT_STARTUP)
    assert s["daemon"]["enabled"] is False and s["daemon"]["url"] is None
    assert s["redis"]["reachable"] is False
    assert s["redis"]["error"].startswith(
        "redis: cannot connect to 127.0.0.1:%d" % free), s
    assert s["redis"]["stream_length"] is None
    # Not migrated: the ledger answers, the table does not exist.
    assert s["ledger"]["reachable"] is False
    assert "processed_documents" in s["ledger"]["error"], s
    assert "s3cret-pw" not in r.stdout + r.stderr
    r = env.run("-c", config, "status")
    assert "s3cret-pw" not in r.stdout + r.stderr
    assert "metrics endpoint disabled" in r.stdout, r


def test_status_watch_json_prints_a_line_a_second_until_sigint(env, port):
    config = env.write_config(metrics={"listen": "127.0.0.1:%d" % port})
    p = subprocess.Popen(consumer_argv(["-c", config, "status", "--watch",
                                        "--json"]),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.5)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == EXIT_OK, err
    lines = out.splitlines()
    assert len(lines) >= 2, out
    for line in lines:
        s = json.loads(line)
        assert s["daemon"]["reachable"] is False
        assert s["redis"]["reachable"] is True


def test_status_with_a_bad_config_exits_78(env):
    config = env.write_config(redis_port="not a port")
    r = env.run("-c", config, "status", "--json")
    assert r.returncode == EXIT_CONFIG, r
    assert r.stdout == ""
    r = env.run("-c", env.write_config(), "status", "extra")
    assert r.returncode == 64, r
