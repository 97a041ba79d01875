-- Jobs: TimescaleDB's job API (add_job, alter_job, delete_job, run_job, job_stats,
-- job_errors) run by one scheduler background worker (src/jobs.rs), or without it by
-- calling analytics.run_pending_jobs() from cron / pg_cron.
--
-- A job is a procedure or function taking (job_id int, config jsonb). It runs in its own
-- transaction, as the role that added it, with max_runtime as its statement timeout. A
-- failure is recorded and retried after retry_period, doubling per consecutive failure but
-- never later than one schedule_interval; it never stops the scheduler.

CREATE TABLE analytics.jobs (
    job_id            serial      PRIMARY KEY,
    application_name  text        NOT NULL,
    proc              regproc     NOT NULL,
    owner             regrole     NOT NULL DEFAULT current_user::regrole,
    schedule_interval interval    NOT NULL CHECK (schedule_interval > interval '0'),
    max_runtime       interval    NOT NULL DEFAULT interval '0' CHECK (max_runtime >= interval '0'),
    max_retries       int         NOT NULL DEFAULT -1,
    retry_period      interval    NOT NULL CHECK (retry_period > interval '0'),
    config            jsonb,
    scheduled         boolean     NOT NULL DEFAULT true,
    fixed_schedule    boolean     NOT NULL DEFAULT true,
    initial_start     timestamptz,
    timezone          text,
    hypertable        regclass,
    next_start        timestamptz NOT NULL
);
-- Jobs below 1000 are the extension's own (created at install, not dumped); users' start at 1000.
ALTER SEQUENCE analytics.jobs_job_id_seq RESTART WITH 1000;
COMMENT ON TABLE analytics.jobs IS 'Scheduled jobs (TimescaleDB''s add_job API); the scheduler worker runs the due ones.';

-- One row per job: what its runs did. Written only by the scheduler and run functions.
CREATE TABLE analytics_internal.job_run_state (
    job_id                 int         PRIMARY KEY REFERENCES analytics.jobs ON DELETE CASCADE,
    last_run_started_at    timestamptz,
    last_finish            timestamptz,
    last_successful_finish timestamptz,
    last_run_status        text,
    last_run_duration      interval,
    running_pid            int,
    total_runs             bigint      NOT NULL DEFAULT 0,
    total_successes        bigint      NOT NULL DEFAULT 0,
    total_failures         bigint      NOT NULL DEFAULT 0,
    total_crashes          bigint      NOT NULL DEFAULT 0,
    consecutive_failures   int         NOT NULL DEFAULT 0
);

CREATE TABLE analytics.job_errors (
    id          bigserial   PRIMARY KEY,
    job_id      int         NOT NULL,
    proc_schema name,
    proc_name   name,
    pid         int,
    start_time  timestamptz,
    finish_time timestamptz NOT NULL DEFAULT now(),
    sqlerrcode  text,
    err_message text
);
CREATE INDEX job_errors_job ON analytics.job_errors (job_id, finish_time DESC);
COMMENT ON TABLE analytics.job_errors IS 'Every failed or crashed job run, newest last.';

CREATE VIEW analytics.job_stats AS
SELECT j.job_id, j.application_name, n.nspname AS proc_schema, p.proname AS proc_name, j.hypertable,
       s.last_run_started_at, s.last_successful_finish,
       coalesce(s.last_run_status, 'Never run') AS last_run_status,
       CASE WHEN s.running_pid IS NOT NULL THEN 'Running' WHEN j.scheduled THEN 'Scheduled' ELSE 'Paused' END AS job_status,
       s.last_run_duration, j.next_start,
       coalesce(s.total_runs, 0) AS total_runs, coalesce(s.total_successes, 0) AS total_successes,
       coalesce(s.total_failures, 0) AS total_failures, coalesce(s.total_crashes, 0) AS total_crashes,
       coalesce(s.consecutive_failures, 0) AS consecutive_failures
FROM analytics.jobs j
JOIN pg_proc p ON p.oid = j.proc
JOIN pg_namespace n ON n.oid = p.pronamespace
LEFT JOIN analytics_internal.job_run_state s USING (job_id);

-- Next start after `finished_at` on the schedule: aligned to initial_start (in the job's
-- time zone, so a daily job stays at the same local hour) when fixed, else one interval later.
CREATE FUNCTION analytics_internal._next_scheduled_start(j analytics.jobs, finished_at timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    origin timestamptz := coalesce(j.initial_start, finished_at);
    next_at timestamptz;
BEGIN
    IF NOT j.fixed_schedule THEN
        RETURN finished_at + j.schedule_interval;
    END IF;
    IF origin > finished_at THEN
        RETURN origin;
    END IF;
    IF j.timezone IS NOT NULL THEN
        next_at := ((origin AT TIME ZONE j.timezone)
                 + j.schedule_interval * (floor(extract(epoch FROM (finished_at - origin))
                                                / extract(epoch FROM j.schedule_interval)) + 1)) AT TIME ZONE j.timezone;
    ELSE
        next_at := origin + j.schedule_interval * (floor(extract(epoch FROM (finished_at - origin))
                                                      / extract(epoch FROM j.schedule_interval)) + 1);
    END IF;
    -- Month intervals do not divide evenly in seconds: step on until strictly after.
    WHILE next_at <= finished_at LOOP
        next_at := next_at + j.schedule_interval;
    END LOOP;
    RETURN next_at;
END
$$;

-- The job API. Each public function is a wrapper with the caller's rights that hands the
-- caller's identity (a token minted from current_user, src/security.rs) to the owner's
-- implementation: analytics.jobs and its helpers are the owner's, and every check is made
-- against that caller, never against session_user (a superuser in the scheduler) or the
-- owner. A check_config function is the caller's code: it runs as the caller, restricted.

-- The procedure must take (job_id int, config jsonb), and the caller must be able to run it by
-- name, as the job will.
CREATE FUNCTION analytics_internal._check_job_settings(caller oid, proc regproc, schedule_interval interval, timezone text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = proc AND p.pronargs = 2
                   AND p.proargtypes[0] = 'int4'::regtype AND p.proargtypes[1] = 'jsonb'::regtype) THEN
        RAISE EXCEPTION 'job procedure % must take (job_id int, config jsonb)', proc
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Declare it as CREATE PROCEDURE name(job_id int, config jsonb) (or a function with those arguments).';
    END IF;
    IF NOT (has_function_privilege(caller, proc, 'EXECUTE')
            AND has_schema_privilege(caller, (SELECT p.pronamespace FROM pg_proc p WHERE p.oid = proc), 'USAGE')) THEN
        RAISE EXCEPTION 'permission denied to execute %', proc USING ERRCODE = 'insufficient_privilege',
            HINT = 'A job runs with the rights of the role that adds it; that role must be able to call the procedure.';
    END IF;
    IF schedule_interval IS NULL OR schedule_interval <= interval '0' THEN
        RAISE EXCEPTION 'schedule_interval must be positive, not %', coalesce(schedule_interval::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF timezone IS NOT NULL AND NOT analytics.is_valid_timezone(timezone) THEN
        RAISE EXCEPTION 'unknown time zone: %', timezone USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use a name from pg_timezone_names.';
    END IF;
END
$$;

CREATE FUNCTION analytics_internal._check_config(caller oid, check_config regproc, config jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF check_config IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = check_config AND p.pronargs = 1 AND p.prokind = 'f'
                       AND p.proargtypes[0] = 'jsonb'::regtype) THEN
            RAISE EXCEPTION 'check_config function % must take (config jsonb)', check_config
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM analytics_internal._call_as(caller, check_config, NULL, coalesce(config, 'null'::jsonb));
    END IF;
END
$$;

CREATE FUNCTION analytics_internal._add_job(token bigint, proc regproc, schedule_interval interval, config jsonb,
                                            initial_start timestamptz, scheduled boolean, check_config regproc,
                                            fixed_schedule boolean, timezone text)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller constant oid := analytics_internal._redeem_caller(token);
    id int;
BEGIN
    PERFORM analytics_internal._check_job_settings(caller, proc, schedule_interval, timezone);
    PERFORM analytics_internal._check_config(caller, check_config, config);
    -- The job runs as the role that added it: it never has more rights than its author.
    INSERT INTO analytics.jobs (application_name, proc, owner, schedule_interval, retry_period, config, scheduled,
                                fixed_schedule, initial_start, timezone, next_start)
    VALUES ('', proc, caller::regrole, schedule_interval, least(schedule_interval, interval '5 minutes'), config,
            scheduled, fixed_schedule, coalesce(initial_start, CASE WHEN fixed_schedule THEN now() END), timezone,
            coalesce(initial_start, now()))
    RETURNING job_id INTO id;
    UPDATE analytics.jobs SET application_name = format('User-Defined Action [%s]', id) WHERE job_id = id;
    INSERT INTO analytics_internal.job_run_state (job_id) VALUES (id);
    RETURN id;
END
$$;

CREATE FUNCTION analytics.add_job(proc regproc, schedule_interval interval, config jsonb DEFAULT NULL,
                                  initial_start timestamptz DEFAULT NULL, scheduled boolean DEFAULT true,
                                  check_config regproc DEFAULT NULL, fixed_schedule boolean DEFAULT true,
                                  timezone text DEFAULT NULL)
RETURNS integer LANGUAGE sql
BEGIN ATOMIC
    SELECT analytics_internal._add_job(analytics_internal._caller_token(), proc, schedule_interval, config, initial_start,
                                       scheduled, check_config, fixed_schedule, timezone);
END;

-- Jobs a role may change: its own, unless it is a superuser.
CREATE FUNCTION analytics_internal._owned_job(caller oid, id int, if_exists boolean DEFAULT false) RETURNS analytics.jobs
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j analytics.jobs;
BEGIN
    SELECT * INTO j FROM analytics.jobs WHERE job_id = id;
    IF NOT FOUND THEN
        IF if_exists THEN
            RAISE NOTICE 'job % not found, skipping', id;
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'job % not found', id USING ERRCODE = 'undefined_object',
            HINT = 'SELECT * FROM analytics.job_stats lists the jobs.';
    END IF;
    IF NOT pg_has_role(caller, j.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'insufficient permissions to alter job %', id
            USING ERRCODE = 'insufficient_privilege', HINT = format('Only %s or a superuser can.', j.owner);
    END IF;
    RETURN j;
END
$$;

-- What alter_job returns (TimescaleDB's columns).
CREATE TYPE analytics.job_settings AS (
    job_id int, schedule_interval interval, max_runtime interval, max_retries int, retry_period interval,
    scheduled boolean, config jsonb, next_start timestamptz, check_config text, fixed_schedule boolean,
    initial_start timestamptz, timezone text);

-- Writes the settings of a job its caller may change (never its procedure or owner).
CREATE FUNCTION analytics_internal._alter_job(token bigint, job_id int, schedule_interval interval, max_runtime interval,
                                              max_retries int, retry_period interval, scheduled boolean, config jsonb,
                                              next_start timestamptz, if_exists boolean, check_config regproc,
                                              fixed_schedule boolean, initial_start timestamptz, timezone text)
RETURNS SETOF analytics.job_settings
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller constant oid := analytics_internal._redeem_caller(token);
    j analytics.jobs := analytics_internal._owned_job(caller, _alter_job.job_id, if_exists);
BEGIN
    IF j.job_id IS NULL THEN
        RETURN;
    END IF;
    j.schedule_interval := coalesce(_alter_job.schedule_interval, j.schedule_interval);
    j.max_runtime := coalesce(_alter_job.max_runtime, j.max_runtime);
    j.max_retries := coalesce(_alter_job.max_retries, j.max_retries);
    j.retry_period := coalesce(_alter_job.retry_period, j.retry_period);
    j.scheduled := coalesce(_alter_job.scheduled, j.scheduled);
    j.config := coalesce(_alter_job.config, j.config);
    j.fixed_schedule := coalesce(_alter_job.fixed_schedule, j.fixed_schedule);
    j.initial_start := coalesce(_alter_job.initial_start, j.initial_start);
    j.timezone := coalesce(_alter_job.timezone, j.timezone);
    j.next_start := coalesce(_alter_job.next_start, _alter_job.initial_start, j.next_start);
    -- The procedure stays; the job's owner must still be able to run it.
    PERFORM analytics_internal._check_job_settings(j.owner, j.proc, j.schedule_interval, j.timezone);
    PERFORM analytics_internal._check_config(caller, check_config, j.config);
    UPDATE analytics.jobs AS t SET
        schedule_interval = j.schedule_interval, max_runtime = j.max_runtime, max_retries = j.max_retries,
        retry_period = j.retry_period, scheduled = j.scheduled, config = j.config, fixed_schedule = j.fixed_schedule,
        initial_start = j.initial_start, timezone = j.timezone, next_start = j.next_start
    WHERE t.job_id = j.job_id;
    RETURN QUERY SELECT j.job_id, j.schedule_interval, j.max_runtime, j.max_retries, j.retry_period, j.scheduled, j.config,
                        j.next_start, check_config::text, j.fixed_schedule, j.initial_start, j.timezone;
END
$$;

CREATE FUNCTION analytics.alter_job(job_id int, schedule_interval interval DEFAULT NULL, max_runtime interval DEFAULT NULL,
                                    max_retries int DEFAULT NULL, retry_period interval DEFAULT NULL,
                                    scheduled boolean DEFAULT NULL, config jsonb DEFAULT NULL,
                                    next_start timestamptz DEFAULT NULL, if_exists boolean DEFAULT false,
                                    check_config regproc DEFAULT NULL, fixed_schedule boolean DEFAULT NULL,
                                    initial_start timestamptz DEFAULT NULL, timezone text DEFAULT NULL)
RETURNS SETOF analytics.job_settings LANGUAGE sql
BEGIN ATOMIC
    SELECT * FROM analytics_internal._alter_job(analytics_internal._caller_token(), job_id, schedule_interval, max_runtime,
                                                max_retries, retry_period, scheduled, config, next_start, if_exists,
                                                check_config, fixed_schedule, initial_start, timezone);
END;

CREATE FUNCTION analytics_internal._delete_job(token bigint, job_id int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._owned_job(analytics_internal._redeem_caller(token), _delete_job.job_id);
    DELETE FROM analytics.jobs j WHERE j.job_id = _delete_job.job_id;
END
$$;

CREATE FUNCTION analytics.delete_job(job_id int) RETURNS void LANGUAGE sql
BEGIN ATOMIC
    SELECT analytics_internal._delete_job(analytics_internal._caller_token(), job_id);
END;

-- Run bookkeeping ----------------------------------------------------------------------

-- Claims a due job for this backend (NULL when none is due), in a transaction of its own
-- before the job runs, so that a crash during the job is seen afterwards.
CREATE FUNCTION analytics_internal._claim_due_job() RETURNS int
LANGUAGE sql AS $$
    -- jobs restored by pg_restore come without their run state
    INSERT INTO analytics_internal.job_run_state (job_id) SELECT j.job_id FROM analytics.jobs j ON CONFLICT DO NOTHING;
    WITH due AS (
        SELECT j.job_id FROM analytics.jobs j
        JOIN analytics_internal.job_run_state s USING (job_id)
        WHERE j.scheduled AND j.next_start <= now() AND s.running_pid IS NULL
        ORDER BY j.next_start, j.job_id
        LIMIT 1 FOR UPDATE OF s SKIP LOCKED)
    UPDATE analytics_internal.job_run_state s
    SET running_pid = pg_backend_pid(), last_run_started_at = clock_timestamp(), total_runs = s.total_runs + 1
    FROM due WHERE s.job_id = due.job_id
    RETURNING s.job_id
$$;

-- When the scheduler can sleep until: the earliest next start of a scheduled job.
CREATE FUNCTION analytics_internal._next_due() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT min(next_start) FROM analytics.jobs WHERE scheduled
$$;

CREATE FUNCTION analytics_internal._record_job_run(id int, sqlerrcode text, err_message text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    j analytics.jobs;
    s analytics_internal.job_run_state;
    finished constant timestamptz := clock_timestamp();
    failed constant boolean := err_message IS NOT NULL;
BEGIN
    SELECT * INTO j FROM analytics.jobs WHERE job_id = id;
    SELECT * INTO s FROM analytics_internal.job_run_state WHERE job_id = id FOR UPDATE;
    IF j.job_id IS NULL THEN
        RETURN;  -- deleted while it ran
    END IF;
    IF failed THEN
        INSERT INTO analytics.job_errors (job_id, proc_schema, proc_name, pid, start_time, finish_time, sqlerrcode, err_message)
        SELECT id, n.nspname, p.proname, s.running_pid, s.last_run_started_at, finished, sqlerrcode, err_message
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = j.proc;
    END IF;
    UPDATE analytics_internal.job_run_state SET
        running_pid = NULL,
        last_finish = finished,
        last_successful_finish = CASE WHEN failed THEN last_successful_finish ELSE finished END,
        last_run_status = CASE WHEN failed THEN 'Failed' ELSE 'Success' END,
        last_run_duration = finished - last_run_started_at,
        total_successes = total_successes + (NOT failed)::int,
        total_failures = total_failures + failed::int,
        total_crashes = total_crashes + (sqlerrcode IS NOT DISTINCT FROM 'crash')::int,
        consecutive_failures = CASE WHEN failed THEN consecutive_failures + 1 ELSE 0 END
    WHERE job_id = id
    RETURNING * INTO s;
    UPDATE analytics.jobs SET
        next_start = CASE
            WHEN NOT failed THEN analytics_internal._next_scheduled_start(j, finished)
            WHEN j.max_retries >= 0 AND s.consecutive_failures > j.max_retries THEN analytics_internal._next_scheduled_start(j, finished)
            ELSE finished + least(j.retry_period * power(2, least(s.consecutive_failures - 1, 20)),
                                  greatest(j.schedule_interval, j.retry_period)) END
    WHERE job_id = id;
END
$$;

-- Runs that were going when their backend died (kill -9, a crash, a restart) are failures,
-- as are runs this backend left marked (its recording failed). Called when the scheduler
-- starts and by every run_pending_jobs().
CREATE FUNCTION analytics_internal._recover_crashed_runs() RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    crashed int;
    id int;
BEGIN
    crashed := 0;
    FOR id IN
        SELECT s.job_id FROM analytics_internal.job_run_state s
        WHERE s.running_pid IS NOT NULL
          -- this backend runs one job at a time: a run still marked as its own is over
          AND (s.running_pid = pg_backend_pid()
               OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = s.running_pid))
    LOOP
        PERFORM analytics_internal._record_job_run(id, 'crash', 'the job''s process ended without finishing it (killed, or the server restarted)');
        crashed := crashed + 1;
    END LOOP;
    -- The same for an online create_hypertable whose worker died (sql/timeseries.sql); it may
    -- wait for the table's locks by short tries, and never fails the jobs that follow.
    BEGIN
        PERFORM analytics_internal._recover_interrupted_conversions();
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'lacaja_analytics: an interrupted conversion could not be undone yet: %', SQLERRM;
    END;
    RETURN crashed;
END
$$;

-- Runs the job's procedure as its owner, in a security-restricted operation (no SET ROLE,
-- RESET ROLE or SET SESSION AUTHORIZATION inside). Called in the job's own transaction.
CREATE FUNCTION analytics_internal._execute_job(id int) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j analytics.jobs;
BEGIN
    SELECT * INTO j FROM analytics.jobs WHERE job_id = id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % not found', id;
    END IF;
    PERFORM analytics_internal._call_as(j.owner, j.proc, j.job_id, coalesce(j.config, 'null'::jsonb));
END
$$;

-- A check_config function is the caller's code: it runs as the caller, restricted.
-- Runs one job now in the caller's session (TimescaleDB's CALL run_job). Its error, if any,
-- is raised to the caller.
CREATE FUNCTION analytics_internal._run_job(token bigint, job_id int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._owned_job(analytics_internal._redeem_caller(token), _run_job.job_id);
    UPDATE analytics_internal.job_run_state s
    SET running_pid = pg_backend_pid(), last_run_started_at = clock_timestamp(), total_runs = s.total_runs + 1
    WHERE s.job_id = _run_job.job_id;
    PERFORM analytics_internal._execute_job(_run_job.job_id);
    PERFORM analytics_internal._record_job_run(_run_job.job_id, NULL, NULL);
END
$$;

CREATE PROCEDURE analytics.run_job(job_id int) LANGUAGE sql
BEGIN ATOMIC
    SELECT analytics_internal._run_job(analytics_internal._caller_token(), job_id);
END;

-- Without the scheduler (no shared_preload_libraries): run every due job the caller may
-- run, each in a subtransaction so that one failure is recorded and the others still run.
-- Call it every minute from cron or pg_cron. No max_runtime here: statement_timeout applies.
CREATE FUNCTION analytics_internal._run_pending_jobs(token bigint) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller constant oid := analytics_internal._redeem_caller(token);
    id int;
    ran int := 0;
    failed int := 0;
    code text;
    message text;
BEGIN
    PERFORM analytics_internal._recover_crashed_runs();
    INSERT INTO analytics_internal.job_run_state (job_id) SELECT j.job_id FROM analytics.jobs j ON CONFLICT DO NOTHING;
    LOOP
        SELECT j.job_id INTO id FROM analytics.jobs j JOIN analytics_internal.job_run_state s USING (job_id)
        WHERE j.scheduled AND j.next_start <= now() AND s.running_pid IS NULL
          AND pg_has_role(caller, j.owner, 'MEMBER')
          AND (s.last_run_started_at IS NULL OR s.last_run_started_at < statement_timestamp())
        ORDER BY j.next_start, j.job_id LIMIT 1;
        EXIT WHEN id IS NULL;
        UPDATE analytics_internal.job_run_state s
        SET running_pid = pg_backend_pid(), last_run_started_at = clock_timestamp(), total_runs = s.total_runs + 1
        WHERE s.job_id = id;
        code := NULL;
        message := NULL;
        BEGIN
            PERFORM analytics_internal._execute_job(id);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
        END;
        PERFORM analytics_internal._record_job_run(id, code, message);
        ran := ran + 1;
        failed := failed + (message IS NOT NULL)::int;
        id := NULL;
    END LOOP;
    RETURN jsonb_build_object('jobs_run', ran, 'jobs_failed', failed);
END
$$;

CREATE FUNCTION analytics.run_pending_jobs() RETURNS jsonb LANGUAGE sql
BEGIN ATOMIC
    SELECT analytics_internal._run_pending_jobs(analytics_internal._caller_token());
END;
