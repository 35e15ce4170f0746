/* A small explicit 2D heat-equation solver in C that streams its temperature field to `pdestream train`.
 *
 *     dT/dt = kappa * Laplacian(T) on the unit square, T = t_hot on the left wall, 0 on the others, T(0) = 0,
 *
 * on an n x n grid that includes the walls (forward Euler, five-point Laplacian; sub-steps keep
 * r = kappa dt_sub / h^2 <= 0.2, below the stability limit 1/4). Frame k is the field at time k * dt.
 * The launcher runs it once per simulation (configs/external_c_heat.toml):
 *
 *     ./heat --sim-id 3 --address 127.0.0.1:47011 --frames 21 --dt 0.002 --kappa 0.3 --t-hot 1.5 [--n 32]
 *
 * Exit status 0 only when every frame was sent and the job took the simulation (pds_close).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pdestream_client.h"

static int usage(const char *why) {
    fprintf(stderr, "heat: %s\nusage: heat --sim-id ID --address HOST:PORT --frames F --dt DT --kappa K "
                    "--t-hot T [--n N]\n", why);
    return 2;
}

int main(int argc, char **argv) {
    long sim_id = -1, frames = 0, n = 32;
    double dt = 0, kappa = 0, t_hot = 0;
    const char *address = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--sim-id")) sim_id = atol(v);
        else if (!strcmp(k, "--address")) address = v;
        else if (!strcmp(k, "--frames")) frames = atol(v);
        else if (!strcmp(k, "--dt")) dt = atof(v);
        else if (!strcmp(k, "--kappa")) kappa = atof(v);
        else if (!strcmp(k, "--t-hot")) t_hot = atof(v);
        else if (!strcmp(k, "--n")) n = atol(v);
        else return usage(k);
    }
    if (argc % 2 == 0) return usage("every option takes a value");
    if (sim_id < 0 || frames < 1 || dt <= 0 || kappa <= 0 || n < 3) return usage("missing or bad option");

    double h = 1.0 / (double)(n - 1);
    long sub = (long)ceil(kappa * dt / (0.2 * h * h));
    double r = kappa * (dt / (double)sub) / (h * h);
    size_t cells = (size_t)n * (size_t)n;
    double *u = calloc(cells, sizeof *u), *w = calloc(cells, sizeof *w);
    if (!u || !w) return usage("out of memory");
    for (long i = 0; i < n; ++i) u[i * n] = t_hot; /* axis 0 is x: row i, column 0 is the left wall (y = 0) */
    memcpy(w, u, cells * sizeof *u);

    const char *fields[] = {"T"};
    long grid[] = {n, n};
    double params[] = {kappa, t_hot}; /* the order of [solver.external.params] */
    pds_client *c = pds_connect(address, sim_id, 2, params, 1, fields, 2, grid);
    if (!c) {
        fprintf(stderr, "heat: %s\n", pds_last_error());
        return 1;
    }
    for (long f = 0; f < frames; ++f) {
        int rc = pds_send_f64(c, "T", f, u);
        if (rc != PDS_OK) { /* PDS_DROPPED (NaN) or an error: stop */
            fprintf(stderr, "heat: frame %ld: %s\n", f, pds_last_error());
            pds_abort(c);
            return rc == PDS_DROPPED ? 0 : 1;
        }
        for (long s = 0; s < sub && f + 1 < frames; ++s) {
            for (long i = 1; i < n - 1; ++i)
                for (long j = 1; j < n - 1; ++j) {
                    long k = i * n + j;
                    w[k] = u[k] + r * (u[k - n] + u[k + n] + u[k - 1] + u[k + 1] - 4.0 * u[k]);
                }
            double *t = u; u = w; w = t;
        }
    }
    int rc = pds_close(c);
    free(u);
    free(w);
    if (rc != PDS_OK) {
        fprintf(stderr, "heat: %s\n", pds_last_error());
        return 1;
    }
    return 0;
}
