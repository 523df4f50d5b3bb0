# Writes OUT, a header defining DSATTN_BUILD_COMMIT: the commit the build's sources come from
# (`git describe --always --dirty --abbrev=7` in SOURCE_DIR: "-dirty" when they differ from it;
# "unknown" without git). The file is rewritten only when that changes, so a build recompiles
# what includes it only after a new commit or a change of the sources' state.
execute_process(
  COMMAND git describe --always --dirty --abbrev=7
  WORKING_DIRECTORY "${SOURCE_DIR}"
  OUTPUT_VARIABLE commit
  OUTPUT_STRIP_TRAILING_WHITESPACE
  ERROR_QUIET
  RESULT_VARIABLE status)
if(NOT status EQUAL 0 OR commit STREQUAL "")
  set(commit "unknown")
endif()
set(content "#pragma once\n#define DSATTN_BUILD_COMMIT \"${commit}\"\n")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
else()
  set(old "")
endif()
if(NOT old STREQUAL content)
  file(WRITE "${OUT}" "${content}")
endif()
