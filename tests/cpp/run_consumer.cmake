# cmake -P script: install the build at BUILD_DIR into WORK_DIR/prefix, then configure, build and run the
# tests/consumer project against that prefix. Fails on the first step that fails.
foreach(var BUILD_DIR WORK_DIR CONSUMER_SOURCE GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: ${var} is not set")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG Release)
endif()

set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/build)
# A prefix left by an earlier run could hide a file the install no longer provides.
file(REMOVE_RECURSE ${WORK_DIR})

function(step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (exit ${rc}):\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

step("cmake --install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} --config ${CONFIG})
set(toolkit_arg)
if(CUDA_TOOLKIT_ROOT)
  set(toolkit_arg -DCUDAToolkit_ROOT=${CUDA_TOOLKIT_ROOT})
endif()
step("configure consumer" ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE} -B ${build} -G ${GENERATOR}
     -DCMAKE_BUILD_TYPE=${CONFIG} -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_PREFIX_PATH=${prefix}
     ${toolkit_arg})
step("build consumer" ${CMAKE_COMMAND} --build ${build} --config ${CONFIG})

find_program(consumer_exe NAMES clusterfusion_consumer PATHS ${build} ${build}/${CONFIG} NO_DEFAULT_PATH)
if(NOT consumer_exe)
  message(FATAL_ERROR "clusterfusion_consumer was not built in ${build}")
endif()
step("run consumer" ${consumer_exe})
if(NOT step_output MATCHES "hidden 2560")
  message(FATAL_ERROR "consumer printed '${step_output}', expected 'hidden 2560'")
endif()
message(STATUS "consumer: ${step_output}")
