"""Secrets never leak (issue 9): every secret stagerelay can be given is
configured with a distinctive value, everything stagerelay prints, logs,
serves or writes is collected, and none of the values may appear in it.

The secrets: the Redis password (redis_password_file in the daemon's
config, redis_password in a second one; the Redis server here has
requirepass), the ledger password (ledger.password_file, and a password
inside ledger.dsn in the second config; the PostgreSQL cluster here makes
the ledger's role authenticate with scram-sha-256), and the NLP API token
(nlp_api.headers Authorization: "Bearer ${NLP_API_TOKEN}" from the
daemon's environment). A wrong Redis password must not be printed either.
The API must receive the token: that is where it belongs.
"""

import os
import signal
import urllib.error
import urllib.request

import pytest

import servers
from conftest import EXIT_OK, Daemon, Env, wait_until

REDIS_PW = "RedisPw-S3cr3t-4a7f"
PG_PW = "PgPw-S3cr3t-9c1e"
TOKEN = "NlpTok-S3cr3t-2b8d"
WRONG_PW = "WrongPw-S3cr3t-0d5e"
SECRETS = (REDIS_PW, PG_PW, TOKEN, WRONG_PW)
ROLE = "srsecret"


class SecretRedis(servers.RedisServer):
    """redis-server with requirepass; its client authenticates."""

    def _argv(self):
        return super()._argv() + ["--requirepass", REDIS_PW]

    def client(self, db=0, decode_responses=False):
        import redis
        return redis.Redis(host=self.host, port=self.port, db=db,
                           password=REDIS_PW,
                           decode_responses=decode_responses,
                           socket_timeout=30)


@pytest.fixture(scope="module")
def secret_redis():
    srv = SecretRedis().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def secret_pg():
    """A cluster of its own: postgres keeps trust (the harness connects
    as it), every other role must give its password (scram-sha-256)."""
    import psycopg2
    srv = servers.PostgresServer().start()
    try:
        conn = srv.connect()
        with conn.cursor() as cur:
            cur.execute("SET password_encryption = 'scram-sha-256'")
            cur.execute("CREATE ROLE " + ROLE + " LOGIN PASSWORD %s",
                        (PG_PW,))
            with open(os.path.join(srv.data, "pg_hba.conf"), "w") as f:
                f.write("local all postgres trust\n"
                        "host all postgres 127.0.0.1/32 trust\n"
                        "host all all 127.0.0.1/32 scram-sha-256\n")
            cur.execute("SELECT pg_reload_conf()")
        conn.close()

        def refused():
            try:
                psycopg2.connect(host="127.0.0.1", port=srv.port,
                                 dbname="postgres", user=ROLE,
                                 password="not-it", connect_timeout=5
                                 ).close()
                return False
            except psycopg2.OperationalError:
                return True
        wait_until(refused, what="scram authentication in effect")
        psycopg2.connect(host="127.0.0.1", port=srv.port, dbname="postgres",
                         user=ROLE, password=PG_PW).close()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def senv(secret_redis, secret_pg, mock_server, tmp_path):
    secret_redis.client().flushall()
    mock_server.reset()
    dbname = secret_pg.create_database()
    conn = secret_pg.connect()
    with conn.cursor() as cur:
        cur.execute('ALTER DATABASE "%s" OWNER TO %s' % (dbname, ROLE))
    conn.close()
    e = Env(secret_redis, secret_pg, mock_server, str(tmp_path), dbname)
    try:
        yield e
    finally:
        e.close()
        secret_pg.drop_database(dbname)


def get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                    timeout=10) as r:
            return "%s %s\n%s" % (r.status, r.headers,
                                  r.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as e:
        return "%s %s\n%s" % (e.code, e.headers,
                              e.read().decode("utf-8", "replace"))


def secret_file(env, name, value):
    path = os.path.join(env.tmpdir, name)
    with open(path, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)
    return path


def result_text(r):
    return "exit %s\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
        r.returncode, r.stdout, r.stderr)


def test_no_secret_appears_in_any_output(senv):
    env = senv
    seen = []                   # (what, text) of everything observable
    port = servers.free_port()
    pg = env.pg
    run_env = {"NLP_API_TOKEN": TOKEN}
    headers = {"Authorization": "Bearer ${NLP_API_TOKEN}"}

    # The daemon's config: every secret from a file or the environment.
    config = env.write_config(
        redis_password_file=secret_file(env, "redis.pw", REDIS_PW),
        retry_failed=False,
        nlp_api={"headers": headers},
        ledger={"dsn": "host=127.0.0.1 port=%d dbname=%s user=%s"
                % (pg.port, env.dbname, ROLE),
                "password_file": secret_file(env, "ledger.pw", PG_PW)},
        logging={"level": "debug"},
        metrics={"listen": "127.0.0.1:%d" % port})

    env.mock.rules([{"match": "doc-400", "status": 400, "success": False},
                    {"match": "doc-503", "status": 503, "success": False}])
    env.publisher.malformed("bad_json")
    env.publisher.document_cleaned("doc-400", "refused")
    env.publisher.document_cleaned("doc-503", "api down")
    env.publisher.document_cleaned("doc-ok", "went through")
    d = env.start(config, env=run_env)
    wait_until(lambda: env.row_status("doc-ok") == "triggered" and
               len(env.dead_letters()) == 3, timeout=20,
               what="one document triggered, three dead letters")

    for args in (("status",), ("status", "--json"), ("check-config",),
                 ("-t",)):
        r = env.run("-c", config, *args, env=run_env)
        assert r.returncode == EXIT_OK, r
        seen.append((" ".join(args), result_text(r)))
    r = env.run("dlq", "list", "-c", config, env=run_env, allow_root=False)
    assert r.returncode == EXIT_OK, r
    seen.append(("dlq list", result_text(r)))
    for path in ("/metrics", "/healthz", "/readyz"):
        seen.append((path, get(port, path)))

    # A reload, then one more document through the reloaded workers.
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("reloaded")
    env.mock.rules([])
    env.publisher.document_cleaned("doc-after-reload", "after a reload")
    wait_until(lambda: env.row_status("doc-after-reload") == "triggered",
               timeout=20, what="document after the reload triggered")
    assert d.stop() == 0, d.stderr
    assert "doc-after-reload" in d.stderr
    seen.append(("daemon stderr", d.stderr))
    seen.append(("daemon stdout", d.stdout))

    # A second config: the secrets written in it, a password in the DSN
    # (URI form), logging to a file.
    logfile = os.path.join(env.tmpdir, "stagerelay.log")
    config2 = env.write_config(
        redis_password=REDIS_PW,
        retry_failed=False,
        nlp_api={"headers": headers},
        ledger={"dsn": "postgresql://%s:%s@127.0.0.1:%d/%s"
                % (ROLE, PG_PW, pg.port, env.dbname)},
        logging={"level": "debug", "file": logfile})
    os.chmod(config2, 0o600)
    env.mock.rules([{"match": "doc-fail-2", "status": 500,
                     "success": False}])
    env.publisher.document_cleaned("doc-fail-2", "fails in the drain")
    env.publisher.document_cleaned("doc-ok-2", "drained")
    r = env.drain(config2, env=run_env, expect=None)
    seen.append(("drain", result_text(r)))
    assert env.row_status("doc-ok-2") == "triggered", r
    assert env.row_status("doc-fail-2") == "dead", r
    for args in (("check-config",), ("-t",), ("status", "--json")):
        r = env.run("-c", config2, *args, env=run_env)
        assert r.returncode == EXIT_OK, r
        seen.append(("config2 " + " ".join(args), result_text(r)))
    assert "<redacted>" in seen[-3][1]      # check-config: the DSN
    # Readable by others: -t warns, naming the keys but not the values.
    os.chmod(config2, 0o644)
    r = env.run("-c", config2, "-t", env=run_env)
    assert r.returncode == EXIT_OK, r
    warned = [x["msg"] for x in r.logs
              if x.get("msg", "").startswith("config: " + config2)]
    assert warned == ["config: %s holds a secret (event_consumer.ledger.dsn, "
                      "event_consumer.redis_password) and is readable by "
                      "others (mode 0644); chmod o-r %s"
                      % (config2, config2)], r
    seen.append(("config2 -t, mode 0644", result_text(r)))
    os.chmod(config2, 0o600)
    with open(logfile, errors="replace") as f:
        text = f.read()
    assert "doc-ok-2" in text
    seen.append(("logging.file", text))

    # A wrong Redis password: the failure is reported, the password not.
    config3 = env.write_config(
        redis_password=WRONG_PW,
        nlp_api={"headers": headers},
        ledger={"dsn": "postgresql://%s:%s@127.0.0.1:%d/%s"
                % (ROLE, WRONG_PW, pg.port, env.dbname)})
    os.chmod(config3, 0o600)
    d3 = Daemon(["-c", config3, "--drain"], env._env(run_env))
    env.daemons.append(d3)
    wait_until(lambda: "WRONGPASS" in d3.stderr, timeout=15,
               what="the refused AUTH logged")
    d3.stop()
    seen.append(("wrong password drain", d3.stderr + d3.stdout))
    r = env.run("-c", config3, "status", env=run_env)
    assert r.returncode != EXIT_OK, r
    assert "password authentication failed" in r.stdout + r.stderr, r
    seen.append(("wrong password status", result_text(r)))

    # What stagerelay stored: the dead letters (every field) and the
    # ledger (every column).
    dls = env.dead_letters()
    assert len(dls) == 4
    seen.append(("dead letters", repr(dls)))
    assert {f[b"dlq_reason"] for _, f in dls} >= {b"invalid_event",
                                                 b"http_error"}
    rows = env.rows()
    assert {r["document_id"] for r in rows} >= {"doc-ok", "doc-400",
                                                "doc-503", "doc-ok-2"}
    seen.append(("processed_documents", repr(rows)))
    deliveries = env.deliveries()
    assert deliveries and any(x.get("error") for x in deliveries)
    seen.append(("deliveries", repr(deliveries)))

    # The API got the token, and only in its Authorization header.
    reqs = env.requests()
    assert reqs
    for req in reqs:
        assert req["headers"].get("authorization") == "Bearer " + TOKEN, req
        assert TOKEN not in req["path"] and TOKEN not in (req["body"] or "")
        for secret in (REDIS_PW, PG_PW, WRONG_PW):
            assert secret not in repr(req), req

    for what, text in seen:
        for secret in SECRETS:
            assert secret not in text, "%s shows a secret:\n%s" % (what,
                                                                    text)
