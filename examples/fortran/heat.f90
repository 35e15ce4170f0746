! A small explicit 2D heat-equation solver in Fortran that streams its temperature field to `pdestream train`.
!
!     dT/dt = kappa * Laplacian(T) on the unit square, T = t_hot on one wall, 0 on the others, T(0) = 0,
!
! the same problem, grid and parameters as examples/c/heat.c (forward Euler, five-point Laplacian, sub-steps
! with r = kappa dt_sub / h^2 <= 0.2). The array is t(n, n); the job receives it in C order, so the hot wall
! t(1, :) is the job's column 0, as in the C example. Run by the launcher (configs/external_fortran_heat.toml):
!
!     ./heat --sim-id 3 --address 127.0.0.1:47011 --frames 21 --dt 0.002 --kappa 0.3 --t-hot 1.5 [--n 32]
!
! Exit status 0 only when every frame was sent and the job took the simulation (pds_close).
program heat
  use, intrinsic :: iso_fortran_env, only: real64, int64, error_unit
  use pdestream_client
  implicit none
  type(pds_client) :: c
  character(len=256) :: key, val, address
  integer(int64) :: sim_id, frames, n, f, s, sub
  real(real64) :: dt, kappa, t_hot, h, r
  real(real64), allocatable :: u(:, :), w(:, :)
  integer :: i, rc, nargs

  sim_id = -1; frames = 0; n = 32; dt = 0; kappa = 0; t_hot = 0; address = ""
  nargs = command_argument_count()
  if (mod(nargs, 2) /= 0) call usage("every option takes a value")
  do i = 1, nargs, 2
     call get_command_argument(i, key)
     call get_command_argument(i + 1, val)
     select case (trim(key))
     case ("--sim-id"); read (val, *) sim_id
     case ("--address"); address = val
     case ("--frames"); read (val, *) frames
     case ("--dt"); read (val, *) dt
     case ("--kappa"); read (val, *) kappa
     case ("--t-hot"); read (val, *) t_hot
     case ("--n"); read (val, *) n
     case default; call usage("unknown option " // trim(key))
     end select
  end do
  if (sim_id < 0 .or. frames < 1 .or. dt <= 0 .or. kappa <= 0 .or. n < 3) call usage("missing or bad option")

  h = 1.0_real64 / real(n - 1, real64)
  sub = ceiling(kappa * dt / (0.2_real64 * h * h), int64)
  r = kappa * (dt / real(sub, real64)) / (h * h)
  allocate(u(n, n), w(n, n))
  u = 0
  u(1, :) = t_hot
  w = u

  ! parameters in the order of [solver.external.params]; grid in Fortran order
  c = pds_connect(trim(address), sim_id, [kappa, t_hot], ["T"], [n, n])
  if (.not. pds_connected(c)) then
     write (error_unit, '(a)') "heat: " // pds_last_error()
     stop 1
  end if
  do f = 0, frames - 1
     rc = pds_send(c, "T", f, u)
     if (rc /= PDS_OK) then
        write (error_unit, '(a)') "heat: " // pds_last_error()
        call pds_abort(c)
        if (rc == PDS_DROPPED) stop 0
        stop 1
     end if
     if (f + 1 == frames) exit
     do s = 1, sub
        w(2:n-1, 2:n-1) = u(2:n-1, 2:n-1) + r * (u(1:n-2, 2:n-1) + u(3:n, 2:n-1) + u(2:n-1, 1:n-2) &
             + u(2:n-1, 3:n) - 4 * u(2:n-1, 2:n-1))
        u(2:n-1, 2:n-1) = w(2:n-1, 2:n-1)
     end do
  end do
  rc = pds_close(c)
  if (rc /= PDS_OK) then
     write (error_unit, '(a)') "heat: " // pds_last_error()
     stop 1
  end if

contains

  subroutine usage(why)
    character(len=*), intent(in) :: why
    write (error_unit, '(a)') "heat: " // why
    write (error_unit, '(a)') "usage: heat --sim-id ID --address HOST:PORT --frames F --dt DT --kappa K --t-hot T [--n N]"
    stop 2
  end subroutine usage

end program heat
