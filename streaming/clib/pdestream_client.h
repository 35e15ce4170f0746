/* pdestream C client: stream a solver's fields into a running `pdestream train` job
 * (workers.backend = "external"). Needs only the C library and POSIX sockets.
 *
 * Compile and link (after `pip install pdestream`):
 *     cc my_solver.c $(pdestream client-config --cflags --libs)
 *
 * Usage:
 *     const char *fields[] = {"T"};
 *     long grid[] = {64, 64};
 *     double params[] = {300.0, 100.0};
 *     pds_client *c = pds_connect(NULL, sim_id, 2, params, 1, fields, 2, grid);
 *     if (!c) { fprintf(stderr, "%s\n", pds_last_error()); return 1; }
 *     for (long k = 0; k < n_frames; ++k) {
 *         advance(T);
 *         if (pds_send(c, "T", k, T) < 0) { fprintf(stderr, "%s\n", pds_last_error()); break; }
 *     }
 *     if (pds_close(c) != PDS_OK) fprintf(stderr, "%s\n", pds_last_error());
 *
 * - address: "HOST:PORT", "[IPV6]:PORT" or "TOKEN@HOST:PORT"; NULL or "" reads $PDESTREAM_ADDRESS
 *   (default 127.0.0.1:47011). The token (needed when the job listens beyond loopback or was given
 *   workers.token) is the TOKEN@ part of the address, else $PDESTREAM_TOKEN.
 * - Arrays are C order (row-major, last axis fastest), shape `grid` (or `local_shape` for a slab):
 *   float32 for pds_send, float64 for pds_send_f64 (sent as float32).
 * - A frame (time index `frame` = 0, 1, 2, ...) is complete once every field of it was sent; send all
 *   fields of a frame before the next frame, frames in increasing order. Complete frames are shipped
 *   several per message (about 4 MiB, at most 256 frames; $PDESTREAM_BATCH_STEPS overrides).
 * - Backpressure: pds_send blocks while the job's max_inflight messages wait for the trainer.
 * - pds_close flushes, marks the simulation complete, waits until the trainer took all of it, and
 *   frees the client whatever it returns. A program that exits without pds_close has its
 *   simulation dropped by the job. To overlap that wait with the next simulation, call pds_end(c)
 *   when a simulation's last frame is sent, connect and send the next one, then pds_close(c).
 * - A closed simulation's connection is kept (per thread) and carries the next pds_connect to the same
 *   address; one the job let go is replaced by a new connection.
 * - Environment: PDESTREAM_CONNECT_TIMEOUT (seconds pds_connect retries while nothing listens,
 *   default 30), PDESTREAM_SEND_TIMEOUT (seconds pds_send/pds_close wait for the trainer, default:
 *   forever).
 * - Not thread-safe per client; pds_last_error is per thread.
 */
#ifndef PDESTREAM_CLIENT_H
#define PDESTREAM_CLIENT_H

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes: 0 success, > 0 a notice, < 0 an error (pds_last_error() says what and how to fix it). */
#define PDS_OK 0
#define PDS_DROPPED 1         /* the job dropped this simulation (it sent NaN/Inf); later sends are ignored */
#define PDS_E_ARG (-1)        /* a wrong call: NULL pointer, unknown field, frame order, bad shape or offset */
#define PDS_E_CONNECT (-2)    /* nothing listens at the address (after the connect timeout), or bad address */
#define PDS_E_REFUSED (-3)    /* the job refused the connection: wrong token, fields, grid or parameters */
#define PDS_E_STOPPED (-4)    /* the job stopped (finished or interrupted) or the connection was lost */
#define PDS_E_REJECTED (-5)   /* the job rejected this simulation's data (e.g. overlapping slabs) */
#define PDS_E_TIMEOUT (-6)    /* no answer within PDESTREAM_SEND_TIMEOUT / the handshake timeout */
#define PDS_E_PROTOCOL (-7)   /* an answer that is not the pdestream protocol */
#define PDS_E_NOMEM (-8)      /* out of memory */

typedef struct pds_client pds_client;

/* One simulation over one connection: `n_params` parameters, `n_fields` field names (the job's
 * channel order), a global grid of `ndim` axes. NULL on failure (pds_last_code / pds_last_error). */
pds_client *pds_connect(const char *address, long sim_id, int n_params, const double *params,
                        int n_fields, const char **fields, int ndim, const long *grid);

/* One rank's slab of an MPI-decomposed simulation: the global `grid`, this rank's slab start
 * `offset` and shape `local_shape` (each ndim long), `n_ranks` processes sending slabs of it. */
pds_client *pds_connect_slab(const char *address, long sim_id, int n_params, const double *params,
                             int n_fields, const char **fields, int ndim, const long *grid,
                             const long *offset, const long *local_shape, int n_ranks);

/* Field `field` of frame `frame`: `data` holds prod(local shape) values in C order. */
int pds_send(pds_client *c, const char *field, long frame, const float *data);
int pds_send_f64(pds_client *c, const char *field, long frame, const double *data);

/* Flush, end the simulation, wait for the trainer, disconnect and free `c` (NULL: no-op, PDS_OK). */
int pds_close(pds_client *c);

/* Flush and end the simulation without waiting for the trainer: the job's acknowledgement comes while
 * the program starts its next simulation; pds_close(c) later waits for it (its return code says whether
 * the simulation arrived) and frees `c`. Only pds_close may follow. An incomplete last frame: PDS_E_ARG,
 * the connection is cut (the job drops the simulation) and pds_close returns the same error. */
int pds_end(pds_client *c);

/* Disconnect without completing the simulation (the job drops it) and free `c`. */
void pds_abort(pds_client *c);

/* The message and code of this thread's last failure ("" and PDS_OK when none). */
const char *pds_last_error(void);
int pds_last_code(void);

/* Sets this thread's error (used by the Fortran module); returns code. */
int pds_fail_(int code, const char *msg);

#ifdef __cplusplus
}
#endif
#endif
