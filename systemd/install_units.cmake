# Runs at install time (install(CODE) in CMakeLists.txt): fills the units and
# the tmpfiles entry with the prefix being installed to — `cmake --install
# build --prefix P` included — not the one the build was configured with.
# Set by the caller: GPUBROKER_UNIT_SOURCE, GPUBROKER_UNIT_OUTPUT and the
# GNUInstallDirs directories as configured (relative or absolute).

# A directory as GNUInstallDirs makes it absolute, but under this install's prefix.
function(gpubroker_install_dir out dir kind)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  elseif(kind STREQUAL "sysconf" AND CMAKE_INSTALL_PREFIX STREQUAL "/usr")
    set(${out} "/${dir}" PARENT_SCOPE)  # /usr's configuration lives in /etc, as GNUInstallDirs has it
  else()
    set(${out} "${CMAKE_INSTALL_PREFIX}/${dir}" PARENT_SCOPE)
  endif()
endfunction()

gpubroker_install_dir(GPUBROKER_SBINDIR "${GPUBROKER_INSTALL_SBINDIR}" plain)
gpubroker_install_dir(GPUBROKER_BINDIR "${GPUBROKER_INSTALL_BINDIR}" plain)
gpubroker_install_dir(GPUBROKER_SYSCONFDIR "${GPUBROKER_INSTALL_SYSCONFDIR}" sysconf)
gpubroker_install_dir(GPUBROKER_DOCDIR "${GPUBROKER_INSTALL_DOCDIR}" plain)
configure_file(${GPUBROKER_UNIT_SOURCE}/gpubroker.service.in ${GPUBROKER_UNIT_OUTPUT}/gpubroker.service @ONLY)
configure_file(${GPUBROKER_UNIT_SOURCE}/gpubroker-user.service.in ${GPUBROKER_UNIT_OUTPUT}/user/gpubroker.service
               @ONLY)
configure_file(${GPUBROKER_UNIT_SOURCE}/gpubroker.tmpfiles ${GPUBROKER_UNIT_OUTPUT}/gpubroker.tmpfiles.conf @ONLY)
